use std::path::Path;
use std::sync::Arc;
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("x")]
    X,
}
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    pub leaf_der: Vec<u8>,
}
pub fn server_config(_c: &str, _k: &str, _d: &Path, _dom: &str) -> Result<TlsSetup, TlsError> {
    todo!()
}
pub fn tls_server_end_point(_l: &[u8]) -> Vec<u8> {
    todo!()
}
pub fn tls_exporter<C>(_c: &rustls::ConnectionCommon<C>) -> Option<Vec<u8>> {
    todo!()
}
