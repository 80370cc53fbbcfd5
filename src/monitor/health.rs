//! A check's health with rise and fall thresholds, so a member that flaps
//! does not flap the answers: pure, fed one probe result at a time.

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub ok: bool,
    pub metrics: Vec<(String, f64)>,
    /// Why the probe failed, for the log.
    pub error: Option<String>,
}

impl Probe {
    pub fn ok(metrics: Vec<(String, f64)>) -> Self {
        Self { ok: true, metrics, error: None }
    }

    pub fn failed(error: impl Into<String>) -> Self {
        Self { ok: false, metrics: Vec::new(), error: Some(error.into()) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    rise: u32,
    fall: u32,
    /// `None` until the first probe: that one decides at once.
    up: Option<bool>,
    /// Consecutive results against the current state.
    streak: u32,
}

impl Health {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self { rise: rise.max(1), fall: fall.max(1), up: None, streak: 0 }
    }

    pub fn up(&self) -> Option<bool> {
        self.up
    }

    /// Takes one result; returns true when the state changed.
    pub fn observe(&mut self, ok: bool) -> bool {
        match self.up {
            None => {
                self.up = Some(ok);
                true
            }
            Some(up) if up == ok => {
                self.streak = 0;
                false
            }
            Some(up) => {
                self.streak += 1;
                let needed = if up { self.fall } else { self.rise };
                if self.streak >= needed {
                    self.up = Some(ok);
                    self.streak = 0;
                    true
                } else {
                    false
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probe_decides_then_thresholds_apply() {
        let mut h = Health::new(2, 2);
        assert!(h.observe(true));
        assert_eq!(h.up(), Some(true));
        assert!(!h.observe(false), "one failure is not enough with fall = 2");
        assert!(!h.observe(true), "a success resets the streak");
        assert!(!h.observe(false));
        assert!(h.observe(false));
        assert_eq!(h.up(), Some(false));
        assert!(!h.observe(true));
        assert!(h.observe(true), "rise = 2");
        assert_eq!(h.up(), Some(true));
    }

    #[test]
    fn fall_one_drops_at_once() {
        let mut h = Health::new(3, 1);
        h.observe(true);
        assert!(h.observe(false));
    }
}
