"""Writes corpus.jsonl beside this file: texts as an app's traces hold them, each with the values redaction must
replace and their kind, and negatives (``"spans": []``) that must come through unchanged.

The values are written here by hand, in the contexts they come in (questions, SQL, JSON, headers, log lines);
the offsets are computed, so the file can be regenerated after an edit: ``python tests/data/redaction/make_corpus.py``.
IBANs and SSNs are checked with python-stdnum and cards with the Luhn check first, so every positive is a real
instance of its kind.
"""

from __future__ import annotations

import json
from pathlib import Path

from stdnum import iban as iban_check
from stdnum import luhn
from stdnum.us import ssn as ssn_check

# (kind, text with each value in [[double brackets]])
EXAMPLES: list[tuple[str, str]] = [
    # -- email --
    ("email", "Which tier is [[jane.doe@acme.io]] in?"),
    ("email", "contact: [[OPS-TEAM@Example.COM]]"),
    ("email", "[[billing+7@customer7.example.com]] asked for a refund"),
    ("email", "send the invoice to [[josé@exämple.de]]"),
    ("email", "SELECT * FROM users WHERE email = '[[k.müller@firma.de]]'"),
    ("email", "GET /redirect?to=[[jane%40example.com]]&x=1"),
    ("email", "mailto:[[li.wei@例子.中国]]"),
    ("email", "user.id=[[a.b-c_d@sub.domain.co.uk]]"),
    ("email", "From: Mark <[[mark@tw.example.org]]>"),
    ("email", "Emails: [[first@x.io]], [[second@y.io]]"),
    ("email", "Email [[FRANÇOIS@société.fr]] about the invoice"),
    ("email", '{"email": "[[priya.raman@corp.example.in]]", "tier": "gold"}'),
    ("email", "reply-to: [[noreply+tag@mail.example.net]]"),
    ("email", "cc [[j_smith99@example.travel]] please"),
    ("email", "the link held [[john.roe%40example.com]] in its query"),
    ("email", "the customer ([[anna@xn--bcher-kva.example]]) wrote"),
    ("email", "reply to [[12345@numbers.example.com]]"),
    ("email", "orders placed by [[info@bücher.example]] last week"),
    ("email", "Ποιος είναι ο [[maria@παράδειγμα.ελ]];"),
    ("email", "WHERE c.email ILIKE '[[Sam.Lee@Example.org]]'"),
    ("email", "user [[o'neil@example.ie]] cannot log in"),
    # -- phone --
    ("phone", "She called from [[+1 415 555 0134]] yesterday"),
    ("phone", "call [[(555) 123-4567]] after lunch"),
    ("phone", "phone: [[415-555-0134]]"),
    ("phone", "or [[415.555.0134]] in the evening"),
    ("phone", "UK office [[+44 20 7946 0958]]"),
    ("phone", "London line [[020 7946 0958]]"),
    ("phone", "Berlin: [[030 1234567]]"),
    ("phone", "mobile [[+49 30 1234567]]"),
    ("phone", "Fax [[0049 30 1234567]]"),
    ("phone", "portable [[06 12 34 56 78]]"),
    ("phone", "appelez le [[+33 6 12 34 56 78]]"),
    ("phone", "München [[089/12345678]]"),
    ("phone", '{"phone": "[[+4915112345678]]"}'),
    ("phone", "Handy [[0171 2345678]]"),
    ("phone", "NYC desk [[+1-212-555-0199]]"),
    ("phone", "desk [[(212) 555 0199]]"),
    ("phone", "Sydney [[+61 2 9876 5432]]"),
    ("phone", "Sydney local [[02 9876 5432]]"),
    ("phone", "Tokyo [[+81 3-1234-5678]]"),
    ("phone", "WHERE phone = '[[0151-23456789]]'"),
    # -- card --
    ("card", "paid with [[4111 1111 1111 1111]]"),
    ("card", "visa [[4012888888881881]]"),
    ("card", "mastercard [[5555555555554444]]"),
    ("card", "card [[5105 1051 0510 5100]] declined"),
    ("card", "amex [[378282246310005]]"),
    ("card", "amex [[3714 496353 98431]]"),
    ("card", "discover [[6011111111111117]]"),
    ("card", "discover [[6011 0009 9013 9424]]"),
    ("card", "jcb [[3530111333300000]]"),
    ("card", "diners [[30569309025904]]"),
    ("card", "maestro [[6759649826438453]]"),
    ("card", "2-series [[2223003122003222]]"),
    ("card", "written with dots [[4111.1111.1111.1111]]"),
    ("card", "dashes [[5555-5555-5555-4444]]"),
    ("card", "unionpay [[6200000000000005]]"),
    ("card", "old visa [[4222222222222]]"),
    ("card", '{"card_number": "[[4000056655665556]]"}'),
    ("card", "WHERE pan = '[[5200828282828210]]'"),
    ("card", "refund to [[3566 0020 2036 0505]] please"),
    ("card", "card no.[[ 6011000990139424]]".replace("[[ ", " [[")),
    # -- ssn --
    ("ssn", "SSN [[078-05-1121]] on file"),
    ("ssn", "ssn: [[123-45-6789]]"),
    ("ssn", "social security number [[219-09-9998]]"),
    ("ssn", '{"ssn": "[[536-90-4399]]"}'),
    ("ssn", "WHERE ssn = '[[457-56-1234]]'"),
    ("ssn", "tax id [[001-01-0001]]"),
    ("ssn", "SSN [[665 12 3456]] (spaces)"),
    ("ssn", "her SSN is [[772-11-2345]]."),
    ("ssn", "ssn=[[349-83-1001]]&dob=1990"),
    ("ssn", "[[521-43-8765]] belongs to the applicant"),
    ("ssn", "Update SSN to [[402-12-9911]]"),
    ("ssn", "SSN: [[600-70-1234]]"),
    ("ssn", "ssn [[288-32-1111]], dob 1988"),
    ("ssn", "primary SSN [[145-67-8910]]"),
    ("ssn", "co-signer SSN [[310-44-5566]]"),
    ("ssn", "ssn <[[233-45-6712]]>"),
    ("ssn", "SSN '[[512-77-4321]]' not found"),
    ("ssn", "check [[623-12-4444]] please"),
    ("ssn", "(SSN [[700-10-2020]])"),
    ("ssn", "applicant ssn [[088-12-3456]] verified"),
    # -- iban --
    ("iban", "pay to [[DE89 3704 0044 0532 0130 00]] please"),
    ("iban", "IBAN: [[GB82 WEST 1234 5698 7654 32]]"),
    ("iban", "virement vers [[FR14 2004 1010 0505 0001 3M02 606]]"),
    ("iban", "cuenta [[ES91 2100 0418 4502 0005 1332]]"),
    ("iban", "conto [[IT60 X054 2811 1010 0000 0123 456]]"),
    ("iban", "rekening [[NL91ABNA0417164300]]"),
    ("iban", "compte [[BE71 0961 2345 6769]]"),
    ("iban", "Konto [[CH93 0076 2011 6238 5295 7]]"),
    ("iban", "Konto [[AT611904300234573201]]"),
    ("iban", "rachunek [[PL61 1090 1014 0000 0712 1981 2874]]"),
    ("iban", "konto [[SE45 5000 0000 0583 9825 7466]]"),
    ("iban", "konto [[DK50 0040 0440 1162 43]]"),
    ("iban", "konto [[NO93 8601 1117 947]]"),
    ("iban", "tili [[FI21 1234 5600 0007 85]]"),
    ("iban", "account [[IE29 AIBK 9311 5212 3456 78]]"),
    ("iban", "conta [[PT50 0002 0123 1234 5678 9015 4]]"),
    ("iban", '{"iban": "[[LU280019400644750000]]"}'),
    ("iban", "λογαριασμός [[GR16 0110 1250 0000 0001 2300 695]]"),
    ("iban", "účet [[CZ65 0800 0000 1920 0014 5399]]"),
    ("iban", "WHERE iban = '[[HU42117730161111101800000000]]'"),
    # -- secret --
    ("secret", "stripe key [[sk_live_4eC39HqLyjWDarjtT1zdp7dc]]"),
    ("secret", "restricted [[rk_live_51HxyzABCDEFGHIJKLMNOPQRSTu]]"),
    ("secret", "test key [[sk_test_51HxyzABCDEFGHIJKLMNOPQRSTuvw]]"),
    ("secret", "HF_TOKEN=[[hf_AbCdEfGhIjKlMnOpQrStUvWxYzABCDEFGH]]"),
    ("secret", "gitlab [[glpat-AbCdEf1234567890XyZw]]"),
    ("secret", "token [[ghp_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6]]"),
    ("secret", "pat [[github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH]]"),
    ("secret", "aws [[AKIAIOSFODNN7EXAMPLE]]"),
    ("secret", "aws_secret_access_key=[[wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY]]"),
    ("secret", 'AWS_SECRET_ACCESS_KEY: "[[je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY]]"'),
    ("secret", "slack [[xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx]]"),
    ("secret", "OPENAI_API_KEY=[[sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z]]"),
    ("secret", "anthropic [[sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789]]"),
    ("secret", "maps key [[AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q]]"),
    (
        "secret",
        "jwt [[eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U]]",
    ),
    ("secret", "Authorization: Bearer [[abc123def456ghi789]]"),
    ("secret", "Authorization: Basic [[dXNlcjpwYXNzd29yZA==]]"),
    ("secret", "postgresql://app:[[s3cr3t-pw]]@db.example.com:5432/sales"),
    ("secret", "https://bob:[[hunter2]]@git.example.com/repo.git"),
    ("secret", "sendgrid [[SG.aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ012]]"),
    ("secret", "twilio [[SK0123456789abcdef0123456789abcdef]]"),
    (
        "secret",
        "pypi [[pypi-AgEIcHlwaS5vcmcCJGFiY2RlZmdoLWlqa2wtbW5vcC1xcnN0LXV2d3h5ejEyMzQ1NgACKlszWyJwcm9qZWN0cyIsICJzaG9w"
        "LWdhdGV3YXkiXQAABiD1x2Q8rT3]]",
    ),
    ("secret", "telegram [[123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1]]"),
    (
        "secret",
        "key:\n[[-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\n-----END RSA PRIVATE KEY-----]]\nend",
    ),
    # -- person --
    ("person", "Dear [[Jane Doe]], your order shipped."),
    ("person", "Thanks, Mr. [[Okonkwo]] will call back"),
    ("person", "Hello Ms. [[Ana-María López-Ruiz]]"),
    ("person", '{"first_name": "[[Priya]]", "last_name": "[[Raman]]", "tier": "gold"}'),
    ("person", "SELECT * FROM customers WHERE full_name = '[[Jane Doe]]'"),
    ("person", "my name is [[Kowalski]] and I want my invoices"),
    ("person", "Best regards,\n[[Heinrich Böll]]"),
    ("person", "show orders of customer [[Jane Doe]]"),
    ("person", "I am [[Olu Adeyemi]], account owner"),
    ("person", "Sehr geehrte Frau [[Schmidt]], Ihre Bestellung"),
    ("person", "Guten Tag Herr [[Müller]]"),
    ("person", "Cheers,\n[[Tom Baker]]"),
    ("person", "a user named [[Kenji Watanabe]] asked"),
    ("person", "patient [[Maria Gonzalez]] was discharged"),
    ("person", "Hi [[Siobhan]], thanks for reaching out"),
    ("person", "Dr. [[Chen]] approved the refund"),
    ("person", '{"customer_name": "[[Lars Sørensen]]", "total": 120.5}'),
    ("person", "UPDATE accounts SET cardholder_name = '[[Ravi Patel]]' WHERE id = 7"),
    ("person", "this is [[Fatima Zahra]] from accounting"),
    ("person", "Sincerely,\n[[Dmitri Ivanov]]"),
    ("person", "refund for [[Jane Doe]] please"),  # no cue: a known gap
    ("person", "[[Carlos Mendes]] wants his invoices"),  # no cue: a known gap
    # -- ip --
    ("ip", "from [[10.20.30.40]]"),
    ("ip", "client [[172.16.5.4]]:51234"),
    ("ip", "X-Forwarded-For: [[203.0.114.9]], [[198.18.0.1]]"),
    ("ip", "host.ip=[[192.168.1.23]]"),
    ("ip", "'[[10.1.2.3]]'::inet"),
    ("ip", "peer [[8.8.4.4]]"),
    ("ip", "ipv6 [[2a00:1450:4001:81c::200e]]"),
    ("ip", "link-local [[fe80::1ff:fe23:4567:890a]]"),
    ("ip", "remote_addr=[[81.2.69.142]]"),
    ("ip", "[[100.64.0.17]] hit the limit"),
    ("ip", "login from [[2001:4860:4860::8888]]"),
    ("ip", "blocked [[45.33.32.156]]"),
    ("ip", '{"ip": "[[91.198.174.192]]"}'),
    ("ip", "src=[[10.0.0.254]] dst=[[10.0.0.1]]"),
    ("ip", "WHERE ip = '[[185.199.108.153]]'"),
    ("ip", "[[151.101.1.69]] is a CDN edge"),
    ("ip", "geo lookup of [[5.255.255.5]]"),
    ("ip", "ip [[2606:4700:4700::1111]]"),
    ("ip", "vpn [[100.100.100.100]]"),
    ("ip", "NAT [[192.168.178.1]]"),
]

NEGATIVES: list[str] = [
    "SELECT c.name, sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.name",
    "SELECT name, tier FROM customers WHERE tier = 'Gold' ORDER BY name LIMIT 10 OFFSET 20",
    "order ORD-2024-000123 shipped",
    "order #4111111111111112 is pending",  # fails the Luhn check
    "total $1,234.56 incl. VAT",
    "Umsatz 1 234 567,89 €",
    "between 2024-01-15 and 2024-02-15",
    "on 15/01/2024 at 10:15:30",
    "am 01.02.2024 um 09:00",
    "id 550e8400-e29b-41d4-a716-446655440000",
    "commit 3c418b8ca3064cffb1a4c385c63ae89c788d74e1",
    "version 1.45.2",
    "amount numeric(12,2), discount numeric(4,2)",
    "Revenue by Product Category",
    '{"name": "Training Day", "units": 4509}',
    '{"name": "Wonka Games", "id": 294}',
    "orders shipped to New York",
    "Dear customer, your order shipped.",
    "we use Basic authentication",
    "SKU-4411-22 is out of stock",
    "tracking 1Z999AA10123456784",
    "invoice 0001 0002",
    "trace 1732000000000000000",
    "http://127.0.0.1:11434 and ::1 and 0.0.0.0",
    "192.0.2.7 and 2001:db8::5",
    "connect on port 5432",
    "ISBN 978-3-16-148410-0",
    "10115 Berlin",
    "Hi there, how can I help?",
    "Hello World",
    "tool.name = get_orders",
    "model qwen2.5-coder:7b at temperature 0.2",
    "pip install scikit-learn (sk-learn is not a key)",
    "hf_hub_download(repo_id)",
    "the glpat- prefix marks GitLab tokens",
    "AKIA is the prefix of AWS key ids",
    "MAC 00:1a:2b:3c:4d:5e",
    "SELECT sum(amount)::numeric, '2024-01-01'::date, x::bigint",
    "revenue went up +12.5% to 1234567.89",
    "ratio 0.25 of 100",
    "LIMIT 10",
    "Top 5 products by quantity in Q3 2024",
    "customers without orders since 2023",
    "GROUP BY date_trunc('month', ordered_at)",
    "The Enterprise Plan costs 1,200 per seat",
    "see RFC 5737 and RFC 3849",
]


def _parse(kind: str, text: str) -> dict[str, object]:
    spans = []
    plain = ""
    rest = text
    while "[[" in rest:
        before, _, tail = rest.partition("[[")
        value, _, rest = tail.partition("]]")
        plain += before
        spans.append({"start": len(plain), "end": len(plain) + len(value), "kind": kind, "value": value})
        plain += value
    plain += rest
    for span in spans:
        value = str(span["value"])
        digits = "".join(c for c in value if c.isdigit())
        if kind == "card":
            assert luhn.is_valid(digits), value
        elif kind == "ssn":
            assert ssn_check.is_valid(digits), value
        elif kind == "iban":
            assert iban_check.is_valid(value.replace(" ", "")), value
    return {"text": plain, "spans": spans}


def main() -> None:
    rows = [_parse(kind, text) for kind, text in EXAMPLES] + [{"text": t, "spans": []} for t in NEGATIVES]
    path = Path(__file__).with_name("corpus.jsonl")
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"{path}: {len(EXAMPLES)} examples, {len(NEGATIVES)} negatives")


if __name__ == "__main__":
    main()
