//! Authentication: SASL mechanisms and password credentials.
pub mod plain;
pub mod scram;
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("x")]
    NotAuthorized,
}
impl AuthError {
    pub fn condition(&self) -> &'static str {
        "not-authorized"
    }
}
