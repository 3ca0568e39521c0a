-- A second schema for the semantic suite's tests, unlike company_db: identity keys, nullable columns, a date
-- column, a composite unique key, a self-contained seed.
CREATE TABLE authors (
    id      integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name    text NOT NULL UNIQUE,
    country text            -- NULL: unknown
);

CREATE TABLE books (
    id        serial PRIMARY KEY,
    author_id integer NOT NULL REFERENCES authors (id),
    title     text NOT NULL,
    published date NOT NULL,
    price     numeric(8,2) NOT NULL CHECK (price >= 0),
    rating    integer CHECK (rating BETWEEN 1 AND 5),  -- NULL: not rated yet
    UNIQUE (author_id, title)
);
