//! The files a volume can hold, by name: what kubelet's volume attributes
//! ask for and what [`crate::render`] writes.

use connector::keys;

/// One file of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileName {
    /// `.env`: shell-sourcable `KEY=value` lines.
    Env,
    /// `http.proxy`: the forward proxy URL with the token.
    HttpProxy,
    /// `https.proxy`: the same URL (the proxy speaks CONNECT for https).
    HttpsProxy,
    /// `ca.crt`: the proxy CA.
    Ca,
    /// `ca-bundle.crt`: the system roots and the proxy CA.
    CaBundle,
    /// `context.token`: the token alone.
    Token,
}

impl FileName {
    /// The files every volume holds unless left out with `!<file>`, in the
    /// order they are written. The others come from the connectors'
    /// classes (`configuration.names`).
    pub const BUILT_IN: [FileName; 6] = [
        FileName::Env,
        FileName::HttpProxy,
        FileName::HttpsProxy,
        FileName::Ca,
        FileName::CaBundle,
        FileName::Token,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileName::Env => keys::CSI_FILE_ENV,
            FileName::HttpProxy => keys::CSI_FILE_HTTP_PROXY,
            FileName::HttpsProxy => keys::CSI_FILE_HTTPS_PROXY,
            FileName::Ca => keys::CSI_FILE_CA,
            FileName::CaBundle => keys::CSI_FILE_CA_BUNDLE,
            FileName::Token => keys::CSI_FILE_TOKEN,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::BUILT_IN.into_iter().find(|f| f.as_str() == name)
    }

    /// True for the files that hold the token.
    pub fn carries_token(self) -> bool {
        matches!(
            self,
            FileName::Env | FileName::HttpProxy | FileName::HttpsProxy | FileName::Token
        )
    }
}
