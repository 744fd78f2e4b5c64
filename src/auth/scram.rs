use super::AuthError;
use crate::store::Credentials;
pub const DEFAULT_ITERATIONS: u32 = 4096;
pub fn derive_credentials(_p: &str, _i: u32) -> Result<Credentials, AuthError> {
    todo!()
}
pub fn verify_password(_c: &Credentials, _p: &str) -> bool {
    todo!()
}
pub enum ScramHash {
    Sha1,
    Sha256,
}
#[derive(Default)]
pub struct ChannelBindingData {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}
pub struct ClientFirst {
    pub username: String,
    pub authzid: Option<String>,
}
impl ClientFirst {
    pub fn parse(_m: &[u8], _p: bool, _o: bool) -> Result<ClientFirst, AuthError> {
        todo!()
    }
}
pub struct ScramServer;
impl ScramServer {
    pub fn server_first(
        _h: ScramHash,
        _c: ClientFirst,
        _k: Option<&Credentials>,
    ) -> (ScramServer, Vec<u8>) {
        todo!()
    }
    pub fn client_final(self, _m: &[u8], _cb: &ChannelBindingData) -> Result<Vec<u8>, AuthError> {
        todo!()
    }
}
