DROP TABLE firmware;
DROP TABLE products;
DROP TABLE api_tokens;
DROP TABLE users;
DROP TABLE tenants;
