DROP TABLE held_reports;
DROP TABLE unknown_device_refusals;
DROP TABLE registration_policies;
DROP TABLE login_failures;
