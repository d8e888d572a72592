//! The Bedrock stand-in (`tests/fixtures/bedrock_origin.py`): checks every request's SigV4
//! signature with botocore's signer against the keys it is given, and logs what it received.

use std::path::PathBuf;
use std::process::Child;

use serde_json::Value;
use tenant_proxy_loadtest::tls::PemPair;

use super::token_endpoint::spawn_python;

/// A running Bedrock stand-in, killed on drop.
pub struct BedrockOrigin {
    /// The port it listens on (its own choice).
    pub port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl BedrockOrigin {
    /// Starts it with `keys` (`{"AKID": {"secret": …, "token": …|null}}`); `tls` serves HTTPS.
    pub fn start(keys: &Value, tls: Option<&PemPair>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let keys_file = dir.path().join("keys.json");
        std::fs::write(&keys_file, keys.to_string()).unwrap();
        let mut args = vec![log.clone().into_os_string(), keys_file.into_os_string()];
        if let Some(pair) = tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, &pair.cert).unwrap();
            std::fs::write(&key, &pair.key).unwrap();
            args.extend(["--tls".into(), cert.into_os_string(), key.into_os_string()]);
        }
        let (child, port) = spawn_python("tests/fixtures/bedrock_origin.py", &args, dir.path());
        Self {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// Every request it received, in order: `{path, akid, ok, error, body, headers}`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for BedrockOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
