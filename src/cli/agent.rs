//! `keybroker agent`: key material kept as files for a gateway (docs/AGENT.md).

use std::path::Path;

use super::Failure;

pub async fn agent(path: &Path, once: bool) -> Result<(), Failure> {
    let cfg = crate::agent::AgentConfig::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
    if once {
        let passes = crate::agent::once(&cfg)
            .await
            .map_err(|e| Failure::Usage(e.to_string()))?;
        return match crate::agent::Pass::exit_code(&passes) {
            0 => Ok(()),
            1 => Err(Failure::Rejected),
            // The configuration: fixed by a person, not by retrying (the cause is logged).
            2 => Err(Failure::Code(2)),
            _ => Err(Failure::Code(crate::exit::TEMPFAIL)),
        };
    }
    crate::agent::run(cfg, crate::app::process::shutdown_signal())
        .await
        .map_err(|e| Failure::Usage(e.to_string()))
}
