-- Bulwark demo: a small online shop with personal data in it.
--
-- Loaded by scripts/demo.sh as the superuser into a fresh database "shop".
-- Every name, email, card number and SSN below is made up; card numbers are
-- the public test numbers card networks publish, so they pass a Luhn check
-- (which is what a credit-card detector looks for) and charge nothing.
--
-- The gateway's upstream logins, created here without LOGIN (demo.sh gives
-- each LOGIN and a random password that only the gateway is told), with least
-- privilege at the database too:
--   shop_ro     SELECT on the public tables, read-only transactions (role
--               "langchain" of policies/langchain-readonly.json);
--   shop_agent  the same reads, plus DELETE on support_tickets and UPDATE of
--               orders.status (role "analyst" of policies/demo.json, whose
--               policy holds every such write for a human's approval).
-- Loading this file twice into one cluster (another database) is fine: the
-- roles are created only when missing.

CREATE TABLE customers (
  id          serial PRIMARY KEY,
  name        text NOT NULL,
  email       text UNIQUE NOT NULL,
  phone       text,
  card_number text,
  ssn         text,
  country     text NOT NULL DEFAULT 'US',
  created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE customers IS 'People who bought something. Holds PII: email, phone, card_number, ssn.';

CREATE TABLE products (
  id        serial PRIMARY KEY,
  sku       text UNIQUE NOT NULL,
  name      text NOT NULL,
  category  text NOT NULL,
  price     numeric(10,2) NOT NULL CHECK (price >= 0)
);

CREATE TABLE orders (
  id           serial PRIMARY KEY,
  customer_id  int NOT NULL REFERENCES customers(id),
  status       text NOT NULL CHECK (status IN ('placed', 'shipped', 'delivered', 'refunded')),
  placed_on    date NOT NULL,
  note         text
);

CREATE TABLE order_items (
  order_id    int NOT NULL REFERENCES orders(id),
  product_id  int NOT NULL REFERENCES products(id),
  quantity    int NOT NULL CHECK (quantity > 0),
  unit_price  numeric(10,2) NOT NULL,
  PRIMARY KEY (order_id, product_id)
);

-- Free text written by people: the place where PII hides in columns nobody
-- declared sensitive (what content detectors are for).
CREATE TABLE support_tickets (
  id           serial PRIMARY KEY,
  customer_id  int REFERENCES customers(id),
  opened_on    date NOT NULL,
  subject      text NOT NULL,
  body         text NOT NULL
);

-- Not for agents at all: a schema the upstream login has no USAGE on (so it
-- does not even show up when a client such as LangChain's SQLDatabase lists
-- and reflects the tables it may use).
CREATE SCHEMA internal;
CREATE TABLE internal.api_keys (
  id       serial PRIMARY KEY,
  service  text NOT NULL,
  api_key  text NOT NULL
);

INSERT INTO customers (name, email, phone, card_number, ssn, country, created_at) VALUES
  ('Alice Archer',    'alice.archer@example.com',   '+1 415 555 0101', '4111111111111111', '123-45-6789', 'US', '2024-01-03 09:12:00+00'),
  ('Bob Baker',       'bob.baker@example.org',      '+1 212 555 0102', '5500005555555559', '987-65-4321', 'US', '2024-01-17 14:40:00+00'),
  ('Carol Chen',      'carol.chen@example.net',     '+1 646 555 0103', '340000000000009',  '222-33-4444', 'US', '2024-02-02 18:05:00+00'),
  ('Dmitri Dvorak',   'dmitri.d@example.com',       '+44 20 7946 0104','4012888888881881', NULL,          'GB', '2024-02-20 08:30:00+00'),
  ('Elena Esposito',  'elena.esposito@example.it',  '+39 06 5555 0105','5105105105105100', NULL,          'IT', '2024-03-11 11:11:00+00'),
  ('Farah Farouk',    'farah.farouk@example.com',   '+1 312 555 0106', '6011111111111117', '321-54-9876', 'US', '2024-03-29 16:45:00+00'),
  ('Gustav Gruber',   'g.gruber@example.de',        '+49 30 5555 0107','4222222222222',    NULL,          'DE', '2024-04-08 07:20:00+00'),
  ('Hana Hayashi',    'hana.hayashi@example.jp',    '+81 3 5555 0108', '3530111333300000', NULL,          'JP', '2024-05-14 03:00:00+00'),
  ('Ivan Ilic',       'ivan.ilic@example.com',      '+1 206 555 0109', '4111111111111111', '555-12-3456', 'US', '2024-06-01 20:10:00+00'),
  ('Julia Jansen',    'julia.jansen@example.nl',    '+31 20 555 0110', '5555555555554444', NULL,          'NL', '2024-06-19 12:00:00+00');

INSERT INTO products (sku, name, category, price) VALUES
  ('MUG-001',  'Ceramic mug',            'kitchen',  12.50),
  ('TEA-010',  'Loose-leaf green tea',   'grocery',   8.90),
  ('KET-200',  'Electric kettle',        'kitchen',  39.00),
  ('BAG-300',  'Canvas tote bag',        'apparel',  15.00),
  ('TSH-410',  'Organic cotton T-shirt', 'apparel',  22.00),
  ('BOK-500',  'The SQL cookbook',       'books',    45.00),
  ('LMP-610',  'Desk lamp',              'home',     54.99),
  ('CHR-720',  'Dark chocolate, 70%',    'grocery',   4.25);

-- 40 orders spread over customers, dates and statuses; deterministic.
INSERT INTO orders (customer_id, status, placed_on, note)
SELECT 1 + (g * 7) % 10,
       (ARRAY['placed', 'shipped', 'delivered', 'delivered', 'refunded'])[1 + g % 5],
       date '2024-07-01' + (g * 3),
       CASE WHEN g % 9 = 0 THEN 'gift wrap, please' END
FROM generate_series(1, 40) AS g;

INSERT INTO order_items (order_id, product_id, quantity, unit_price)
SELECT o.id, p.id, 1 + (o.id + p.id) % 3, p.price
FROM orders o
JOIN products p ON (o.id + p.id) % 3 = 0;

INSERT INTO support_tickets (customer_id, opened_on, subject, body) VALUES
  (2, '2024-08-02', 'Card declined',
   'Hi, my card 5500 0055 5555 5559 was declined twice. Please call me back at +1 212 555 0102.'),
  (1, '2024-08-15', 'Change of email',
   'Please send receipts to alice.work@example.com from now on. My SSN is 123-45-6789 if you need to verify me.'),
  (6, '2024-09-01', 'Refund',
   'Refund for order 12 please. Thanks, Farah'),
  (4, '2024-09-20', 'Integration help',
   'Our script fails with token sk_live_51HxQ2eZvKYlo2C8x7Qj3dEm, is that the right key?');

INSERT INTO internal.api_keys (service, api_key) VALUES
  ('payments', 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'),
  ('shipping', 'shp_9f8e7d6c5b4a39281706f5e4d3c2b1a0');

-- The gateway's upstream logins (see the top of this file).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_ro') THEN
    CREATE ROLE shop_ro NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_agent') THEN
    CREATE ROLE shop_agent NOLOGIN;
  END IF;
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO shop_ro, shop_agent', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO shop_ro, shop_agent;
GRANT SELECT ON customers, products, orders, order_items, support_tickets TO shop_ro, shop_agent;
GRANT DELETE ON support_tickets TO shop_agent;
GRANT UPDATE (status) ON orders TO shop_agent;
ALTER ROLE shop_ro SET default_transaction_read_only = on;

ANALYZE;
