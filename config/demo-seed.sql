-- The demo and benchmark `orders` table. Run with: psql -v rows=1000000 -f config/demo-seed.sql
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (
  id            bigint PRIMARY KEY,
  customer_name text NOT NULL,
  email         text NOT NULL,
  amount        numeric(12,2) NOT NULL,
  category      text NOT NULL,
  created_at    timestamptz NOT NULL,
  note          text
);
INSERT INTO orders
SELECT g,
       'Customer ' || g,
       'customer' || g || '@example.com',
       round((random() * 1000)::numeric, 2),
       (ARRAY['books', 'games', 'garden', 'music', 'tools'])[1 + g % 5],
       timestamptz '2024-01-01 00:00:00+00' + g * interval '17.25 seconds',
       CASE WHEN g % 10 = 0 THEN 'gift, wrap "nicely"' END
FROM generate_series(1, :rows) AS g;
VACUUM ANALYZE orders;
