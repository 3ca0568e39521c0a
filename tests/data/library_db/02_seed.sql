INSERT INTO authors (name, country)
SELECT 'Author ' || g, (ARRAY['DE', 'FR', 'US', 'JP'])[1 + g % 4] FROM generate_series(1, 40) AS g;

INSERT INTO books (author_id, title, published, price, rating)
SELECT 1 + g % 40, 'Book ' || g, date '2018-01-01' + (g * 7) % 2500, 5 + (g * 13) % 60 + 0.99, 1 + (g * 7) % 5
FROM generate_series(1, 400) AS g;
