//! Which SCRAM variant to answer the server's SASL request with: the
//! channel-binding decision, kept apart from the I/O so every case is
//! unit-tested.
//!
//! Rules (libpq's, for its `channel_binding` setting):
//! - with TLS, a server that offers `SCRAM-SHA-256-PLUS` gets it, bound to the
//!   `tls-server-end-point` hash of its certificate — unless `channel_binding=disable`;
//! - with TLS but no `-PLUS` on offer, plain `SCRAM-SHA-256` is sent with the
//!   gs2 flag `y` ("I could bind, I believe you cannot"), so a server that
//!   does support binding detects a man in the middle that stripped `-PLUS`;
//! - without TLS, or with `channel_binding=disable`, the flag is `n`;
//! - `channel_binding=require` accepts nothing but `-PLUS`: no TLS, no `-PLUS`
//!   on offer, or a password method outside SASL (md5, cleartext, trust) fails.

use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};

/// libpq's `channel_binding` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelBindingMode {
    Disable,
    Prefer,
    Require,
}

impl From<tokio_postgres::config::ChannelBinding> for ChannelBindingMode {
    fn from(setting: tokio_postgres::config::ChannelBinding) -> Self {
        match setting {
            tokio_postgres::config::ChannelBinding::Disable => ChannelBindingMode::Disable,
            tokio_postgres::config::ChannelBinding::Require => ChannelBindingMode::Require,
            // Prefer, and whatever later versions of the enum add.
            _ => ChannelBindingMode::Prefer,
        }
    }
}

/// The TLS side of the decision: no TLS, or TLS with the server certificate's
/// end-point hash (or the reason it could not be computed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsBinding {
    Plaintext,
    Encrypted(Result<Vec<u8>, String>),
}

/// The chosen SASL mechanism and the channel-binding flag to send with it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScramPlan {
    /// `SCRAM-SHA-256-PLUS`, bound to this end-point hash.
    Bound(Vec<u8>),
    /// `SCRAM-SHA-256`; `client_could_bind` selects the `y` flag over `n`.
    Unbound { client_could_bind: bool },
}

impl ScramPlan {
    /// The mechanism name for `SASLInitialResponse`.
    pub(crate) fn mechanism(&self) -> &'static str {
        match self {
            ScramPlan::Bound(_) => SCRAM_SHA_256_PLUS,
            ScramPlan::Unbound { .. } => SCRAM_SHA_256,
        }
    }

    /// The binding for `postgres_protocol`'s SCRAM state machine.
    pub(crate) fn channel_binding(&self) -> ChannelBinding {
        match self {
            ScramPlan::Bound(end_point) => ChannelBinding::tls_server_end_point(end_point.clone()),
            ScramPlan::Unbound { client_could_bind: true } => ChannelBinding::unrequested(),
            ScramPlan::Unbound { client_could_bind: false } => ChannelBinding::unsupported(),
        }
    }
}

/// Picks the mechanism from the server's list; `Err` says why none fits and what to change.
pub(crate) fn choose_scram(
    offered: &[String],
    tls: &TlsBinding,
    mode: ChannelBindingMode,
) -> Result<ScramPlan, String> {
    let plus_offered = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
    let plain_offered = offered.iter().any(|m| m == SCRAM_SHA_256);
    let unbound = |client_could_bind| {
        if plain_offered {
            Ok(ScramPlan::Unbound { client_could_bind })
        } else {
            Err(format!(
                "the server offers SASL mechanisms {offered:?}, and this client can only use SCRAM-SHA-256 here"
            ))
        }
    };
    match mode {
        ChannelBindingMode::Require => {
            let TlsBinding::Encrypted(end_point) = tls else {
                return Err("channel_binding=require needs TLS, but this connection is not encrypted; set \
                            sslmode=require or stronger (over TCP: unix sockets never use TLS)"
                    .into());
            };
            if !plus_offered {
                return Err("channel_binding=require, but the server does not offer SCRAM-SHA-256-PLUS; the role \
                            needs a scram-sha-256 password and pg_hba.conf the scram-sha-256 method"
                    .into());
            }
            match end_point {
                Ok(end_point) => Ok(ScramPlan::Bound(end_point.clone())),
                Err(reason) => Err(format!(
                    "channel_binding=require, but {reason}; set channel_binding=prefer to log in without it"
                )),
            }
        }
        ChannelBindingMode::Prefer => match tls {
            TlsBinding::Encrypted(Ok(end_point)) if plus_offered => Ok(ScramPlan::Bound(end_point.clone())),
            // The server can bind but this certificate cannot be bound to: say so with 'n'.
            TlsBinding::Encrypted(Err(_)) if plus_offered => unbound(false),
            TlsBinding::Encrypted(_) => unbound(true),
            TlsBinding::Plaintext => unbound(false),
        },
        ChannelBindingMode::Disable => unbound(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn encrypted() -> TlsBinding {
        TlsBinding::Encrypted(Ok(vec![7; 32]))
    }

    #[test]
    fn tls_and_plus_on_offer_binds() {
        let both = offered(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        for mode in [ChannelBindingMode::Prefer, ChannelBindingMode::Require] {
            let plan = choose_scram(&both, &encrypted(), mode).unwrap();
            assert_eq!(plan, ScramPlan::Bound(vec![7; 32]));
            assert_eq!(plan.mechanism(), "SCRAM-SHA-256-PLUS");
        }
    }

    #[test]
    fn tls_without_plus_on_offer_says_the_client_could_bind() {
        let plan = choose_scram(&offered(&[SCRAM_SHA_256]), &encrypted(), ChannelBindingMode::Prefer).unwrap();
        assert_eq!(plan, ScramPlan::Unbound { client_could_bind: true });
        assert_eq!(plan.mechanism(), "SCRAM-SHA-256");
    }

    #[test]
    fn plaintext_and_disable_never_bind() {
        let both = offered(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        assert_eq!(
            choose_scram(&both, &TlsBinding::Plaintext, ChannelBindingMode::Prefer).unwrap(),
            ScramPlan::Unbound { client_could_bind: false }
        );
        assert_eq!(
            choose_scram(&both, &encrypted(), ChannelBindingMode::Disable).unwrap(),
            ScramPlan::Unbound { client_could_bind: false }
        );
    }

    #[test]
    fn unbindable_certificate_falls_back_under_prefer_and_fails_under_require() {
        let both = offered(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        let unbindable = TlsBinding::Encrypted(Err("the certificate uses Ed25519".into()));
        assert_eq!(
            choose_scram(&both, &unbindable, ChannelBindingMode::Prefer).unwrap(),
            ScramPlan::Unbound { client_could_bind: false }
        );
        let reason = choose_scram(&both, &unbindable, ChannelBindingMode::Require).unwrap_err();
        assert!(reason.contains("Ed25519") && reason.contains("channel_binding=prefer"), "{reason}");
    }

    #[test]
    fn require_refuses_plaintext_and_servers_without_plus() {
        let both = offered(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        let reason = choose_scram(&both, &TlsBinding::Plaintext, ChannelBindingMode::Require).unwrap_err();
        assert!(reason.contains("sslmode"), "{reason}");
        let reason = choose_scram(&offered(&[SCRAM_SHA_256]), &encrypted(), ChannelBindingMode::Require).unwrap_err();
        assert!(reason.contains("SCRAM-SHA-256-PLUS"), "{reason}");
    }

    #[test]
    fn unknown_mechanisms_only_is_an_error() {
        let reason =
            choose_scram(&offered(&["OAUTHBEARER"]), &TlsBinding::Plaintext, ChannelBindingMode::Prefer).unwrap_err();
        assert!(reason.contains("OAUTHBEARER"), "{reason}");
    }
}
