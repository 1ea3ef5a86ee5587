-- Demo schema for pgfanout: a short-term rental app (hosts list properties in
-- cities, guests book reservations and review them), modelled on the seed
-- documents' usuarios / ciudades / propiedades / reservas / reseñas, in English.
--
-- Load into an empty database:
--   psql -v ON_ERROR_STOP=1 -d app -f sql/demo_schema.sql
-- Every table has a primary key, so the default replica identity is enough for
-- UPDATE and DELETE to carry the key through logical replication.

BEGIN;

CREATE TABLE cities (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    region      text,
    country     text NOT NULL DEFAULT 'PE',
    UNIQUE (name, country)
);

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    phone       text,
    is_host     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE properties (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_id          bigint NOT NULL REFERENCES users (id),
    city_id          bigint NOT NULL REFERENCES cities (id),
    title            text NOT NULL,
    capacity         integer NOT NULL CHECK (capacity > 0),
    price_per_night  numeric(10, 2) NOT NULL CHECK (price_per_night >= 0),
    amenities        jsonb NOT NULL DEFAULT '{}'::jsonb,
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX properties_city_idx ON properties (city_id);
CREATE INDEX properties_host_idx ON properties (host_id);

CREATE TABLE reservations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    property_id  bigint NOT NULL REFERENCES properties (id),
    guest_id     bigint NOT NULL REFERENCES users (id),
    check_in     date NOT NULL,
    check_out    date NOT NULL,
    total_price  numeric(12, 2) NOT NULL CHECK (total_price >= 0),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'confirmed', 'cancelled', 'completed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (check_out > check_in)
);
-- Short values, never TOASTed: a row filter on status can always read it.
ALTER TABLE reservations ALTER COLUMN status SET STORAGE PLAIN;
CREATE INDEX reservations_property_idx ON reservations (property_id);
CREATE INDEX reservations_guest_idx ON reservations (guest_id);

-- One review per reservation; deleting a reservation deletes its review too,
-- so the change stream also carries cascaded deletes.
CREATE TABLE reviews (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reservation_id  bigint NOT NULL UNIQUE REFERENCES reservations (id) ON DELETE CASCADE,
    rating          smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment         text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Seed rows -----------------------------------------------------------------

INSERT INTO cities (name, region) VALUES
    ('Lima', 'Lima'),
    ('Cusco', 'Cusco'),
    ('Arequipa', 'Arequipa'),
    ('Trujillo', 'La Libertad'),
    ('Piura', 'Piura');

INSERT INTO users (email, full_name, phone, is_host) VALUES
    ('lucia.quispe@example.com',   'Lucía Quispe',   '+51 912 345 001', true),
    ('mateo.huaman@example.com',   'Mateo Huamán',   '+51 912 345 002', true),
    ('valeria.rojas@example.com',  'Valeria Rojas',  '+51 912 345 003', true),
    ('diego.torres@example.com',   'Diego Torres',   '+51 912 345 004', false),
    ('camila.flores@example.com',  'Camila Flores',  '+51 912 345 005', false),
    ('sebastian.diaz@example.com', 'Sebastián Díaz', NULL,              false),
    ('sofia.mendoza@example.com',  'Sofía Mendoza',  '+51 912 345 007', false),
    ('andres.vargas@example.com',  'Andrés Vargas',  NULL,              false);

INSERT INTO properties (host_id, city_id, title, capacity, price_per_night, amenities)
SELECT u.id, c.id, p.title, p.capacity, p.price, p.amenities::jsonb
FROM (VALUES
    ('lucia.quispe@example.com',  'Lima',     'Departamento frente al mar en Miraflores', 4, 180.00, '{"wifi": true, "parking": true, "pool": false}'),
    ('lucia.quispe@example.com',  'Lima',     'Loft en Barranco',                         2, 120.00, '{"wifi": true, "workspace": true}'),
    ('mateo.huaman@example.com',  'Cusco',    'Casa colonial cerca de la Plaza de Armas', 6, 250.00, '{"wifi": true, "heating": true, "breakfast": true}'),
    ('mateo.huaman@example.com',  'Cusco',    'Habitación en San Blas',                   2,  75.50, '{"wifi": true}'),
    ('valeria.rojas@example.com', 'Arequipa', 'Casona de sillar con vista al Misti',      5, 160.00, '{"wifi": true, "terrace": true}'),
    ('valeria.rojas@example.com', 'Trujillo', 'Bungalow en Huanchaco',                    3, 110.00, '{"wifi": false, "beach": true}'),
    ('lucia.quispe@example.com',  'Piura',    'Casa de playa en Máncora',                 8, 320.00, '{"wifi": true, "pool": true, "beach": true}')
) AS p (host_email, city_name, title, capacity, price, amenities)
JOIN users u ON u.email = p.host_email
JOIN cities c ON c.name = p.city_name;

-- What pgfanout streams (deploy/local/pgfanout.toml.in names it).
CREATE PUBLICATION pgfanout_demo FOR TABLE cities, users, properties, reservations, reviews;

COMMIT;
