//! Authentication: SASL mechanisms and password credentials.
