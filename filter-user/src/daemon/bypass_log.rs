//! The daemon's side of the bypass report: logs which interfaces could deliver traffic to the
//! protected ports unfiltered (the rule is in [`crate::policy::bypass`]) at start, and again
//! whenever that set changes (link events, attach and detach, the tick), so a new tunnel
//! device shows up in the log without anyone running `apifence check`.

use tracing::{error, info, warn};

use crate::{
    kernel::{attach, interfaces, paths::PinLayout},
    policy::bypass,
};

/// What was last logged, so an unchanged report is not repeated every second.
#[derive(Debug, Default)]
pub struct BypassLog {
    /// The unfiltered interfaces last reported (`None` before the first report).
    last: Option<Vec<String>>,
    /// Reading the interfaces failed last time (logged once until it works again).
    failing: bool,
}

impl BypassLog {
    /// Reads the interfaces and logs the report when it differs from the last one.
    pub fn check(&mut self, layout: &PinLayout) {
        let listed = match interfaces::list(|name| attach::filters(layout, name)) {
            Ok(listed) => {
                self.failing = false;
                listed
            }
            Err(e) => {
                if !self.failing {
                    error!(
                        error = %crate::daemon::ErrorChain(&e),
                        "cannot list the interfaces for the bypass report (apifence check)"
                    );
                    self.failing = true;
                }
                return;
            }
        };
        let assessed = bypass::assess(&listed);
        let open = bypass::bypasses(&assessed);
        let names: Vec<String> = open.iter().map(|a| a.name.clone()).collect();
        if self.last.as_ref() == Some(&names) {
            return;
        }
        if open.is_empty() {
            info!("no unfiltered interface can deliver traffic to the protected ports");
        }
        for a in &open {
            warn!(
                interface = %a.name,
                kind = %a.kind.name(),
                "unfiltered interface could deliver traffic to the protected ports: {}",
                a.reason
            );
        }
        self.last = Some(names);
    }
}
