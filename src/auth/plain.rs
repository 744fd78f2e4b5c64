use super::AuthError;
pub struct PlainRequest {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}
pub fn parse(_msg: &[u8]) -> Result<PlainRequest, AuthError> {
    todo!()
}
