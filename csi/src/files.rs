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
    /// `config.json`: docker/podman/skopeo auth for the reverse proxy host.
    DockerConfig,
    /// `buildkitd.toml`: registry mirrors and trust for buildkitd.
    Buildkitd,
    /// `ca.crt`: the proxy CA.
    Ca,
    /// `ca-bundle.crt`: the system roots and the proxy CA.
    CaBundle,
    /// `context.token`: the token alone.
    Token,
}

impl FileName {
    /// Every file, in the order they are written.
    pub const ALL: [FileName; 8] = [
        FileName::Env,
        FileName::HttpProxy,
        FileName::HttpsProxy,
        FileName::DockerConfig,
        FileName::Buildkitd,
        FileName::Ca,
        FileName::CaBundle,
        FileName::Token,
    ];

    /// The files every volume holds unless left out with `!<file>`.
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
            FileName::DockerConfig => keys::CSI_FILE_DOCKER_CONFIG,
            FileName::Buildkitd => keys::CSI_FILE_BUILDKITD,
            FileName::Ca => keys::CSI_FILE_CA,
            FileName::CaBundle => keys::CSI_FILE_CA_BUNDLE,
            FileName::Token => keys::CSI_FILE_TOKEN,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The file names, comma-separated, for error messages.
    pub fn known_list() -> String {
        Self::ALL.map(FileName::as_str).join(", ")
    }

    /// True for the files that hold the token.
    pub fn carries_token(self) -> bool {
        matches!(
            self,
            FileName::Env | FileName::HttpProxy | FileName::HttpsProxy | FileName::DockerConfig | FileName::Token
        )
    }
}
