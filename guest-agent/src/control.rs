//! Who may act: the agent (by default), a human who took control, or nobody (agent paused).
//!
//! A pure state machine told the time (`t_ms`), so every transition is testable without a clock.
//!
//! Every change bumps a **generation**. The agent is admitted to act at one generation
//! ([`Control::agent_admission`]) and its input carries it to the injection thread, which drops
//! whatever carries an older one (see [`crate::input`]): a check made once, before a long
//! action, cannot outlive a `take`.

use porthole_proto::{ControlAction, ControlState, Holder};

/// Which human holds control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Human {
    /// Taken through `POST /v1/control`: every viewer's input is applied.
    Api,
    /// Taken from one viewer's data channel: only that viewer's input is applied.
    Viewer(String),
}

#[derive(Debug, Clone)]
pub struct Control {
    human: Option<Human>,
    agent_paused: bool,
    since_t_ms: u64,
    /// Bumped on every change of holder or pause state.
    generation: u64,
}

/// Why an action was refused, in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Default for Control {
    fn default() -> Self {
        Self {
            human: None,
            agent_paused: false,
            since_t_ms: 0,
            generation: 0,
        }
    }
}

impl Control {
    pub fn state(&self) -> ControlState {
        let holder = match (&self.human, self.agent_paused) {
            (Some(_), _) => Holder::Human,
            (None, false) => Holder::Agent,
            (None, true) => Holder::Nobody,
        };
        ControlState {
            holder,
            agent_paused: self.agent_paused,
            since_t_ms: self.since_t_ms,
        }
    }

    pub fn human(&self) -> Option<&Human> {
        self.human.as_ref()
    }

    /// Applies an action; returns whether anything changed.
    pub fn apply(&mut self, action: ControlAction, who: Human, t_ms: u64) -> bool {
        let before = (self.human.clone(), self.agent_paused);
        match action {
            ControlAction::PauseAgent => self.agent_paused = true,
            ControlAction::ResumeAgent => self.agent_paused = false,
            ControlAction::Take => self.human = Some(who),
            ControlAction::Release => {
                // Only the holder (or the API, which speaks for the user) can release.
                if self.human.as_ref() == Some(&who) || who == Human::Api {
                    self.human = None;
                }
            }
        }
        let changed = before != (self.human.clone(), self.agent_paused);
        if changed {
            self.since_t_ms = t_ms;
            self.generation += 1;
        }
        changed
    }

    /// The current generation: it changes whenever who may act changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation the agent may act at, or why it may not act now. Input the agent sends
    /// with this generation is injected only while it is still the current one.
    pub fn agent_admission(&self) -> Result<u64, Refusal> {
        self.agent_may_act().map(|()| self.generation)
    }

    /// A viewer left: control it held goes back to the agent.
    pub fn viewer_gone(&mut self, viewer: &str, t_ms: u64) -> bool {
        if self.human == Some(Human::Viewer(viewer.to_string())) {
            self.human = None;
            self.since_t_ms = t_ms;
            self.generation += 1;
            return true;
        }
        false
    }

    pub fn agent_may_act(&self) -> Result<(), Refusal> {
        match (&self.human, self.agent_paused) {
            (Some(_), _) => Err(Refusal(format!(
                "a human holds control since t_ms {}; the agent may act again after they release it",
                self.since_t_ms
            ))),
            (None, true) => Err(Refusal(format!(
                "the agent is paused since t_ms {}; resume it with POST /v1/control {{\"action\":\"resume_agent\"}}",
                self.since_t_ms
            ))),
            (None, false) => Ok(()),
        }
    }

    pub fn viewer_may_act(&self, viewer: &str) -> Result<(), Refusal> {
        match &self.human {
            Some(Human::Api) => Ok(()),
            Some(Human::Viewer(v)) if v == viewer => Ok(()),
            Some(Human::Viewer(_)) => Err(Refusal(format!(
                "another viewer holds control since t_ms {}; send {{\"type\":\"control\",\"action\":\"take\"}} to take it",
                self.since_t_ms
            ))),
            None => Err(Refusal(format!(
                "the {} holds control since t_ms {}; send {{\"type\":\"control\",\"action\":\"take\"}} first",
                if self.agent_paused { "nobody (agent paused)" } else { "agent" },
                self.since_t_ms
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ControlAction::*;

    #[test]
    fn transitions() {
        let mut c = Control::default();
        assert_eq!(c.state().holder, Holder::Agent);
        assert!(c.agent_may_act().is_ok());
        assert!(c.viewer_may_act("v1").is_err());

        assert!(c.apply(Take, Human::Viewer("v1".into()), 100));
        assert_eq!(
            c.state(),
            ControlState {
                holder: Holder::Human,
                agent_paused: false,
                since_t_ms: 100
            }
        );
        assert!(c.viewer_may_act("v1").is_ok());
        let e = c.viewer_may_act("v2").unwrap_err();
        assert!(e.0.contains("another viewer"), "{e}");
        let e = c.agent_may_act().unwrap_err();
        assert!(e.0.contains("human") && e.0.contains("100"), "{e}");

        assert!(
            !c.apply(Release, Human::Viewer("v2".into()), 150),
            "only the holder releases"
        );
        assert!(c.viewer_gone("v1", 200));
        assert_eq!(c.state().holder, Holder::Agent);
        assert_eq!(c.state().since_t_ms, 200);

        assert!(c.apply(PauseAgent, Human::Api, 300));
        assert_eq!(c.state().holder, Holder::Nobody);
        assert!(c.agent_may_act().unwrap_err().0.contains("paused"));
        assert!(
            !c.apply(PauseAgent, Human::Api, 400),
            "no change, since stays"
        );
        assert_eq!(c.state().since_t_ms, 300);
        assert!(c.apply(Take, Human::Api, 500));
        assert!(
            c.viewer_may_act("anyone").is_ok(),
            "API take lets every viewer act"
        );
        assert!(c.apply(Release, Human::Api, 600));
        assert!(c.apply(ResumeAgent, Human::Api, 700));
        assert!(c.agent_may_act().is_ok());
    }

    /// Each row: an action (or a viewer leaving), whether the generation moves, and whether the
    /// agent is admitted afterwards. A generation taken before a row that moves it is stale.
    #[test]
    fn generations() {
        enum Step {
            Act(ControlAction, Human),
            ViewerGone(&'static str),
        }
        use Step::*;
        let v1 = || Human::Viewer("v1".into());
        let rows: Vec<(Step, bool, bool)> = vec![
            (Act(Take, v1()), true, false),
            (Act(Take, v1()), false, false), // no change, same generation
            (Act(Release, Human::Viewer("v2".into())), false, false),
            (Act(PauseAgent, Human::Api), true, false), // paused under the human
            (Act(Release, v1()), true, false),          // still paused: nobody
            (Act(ResumeAgent, Human::Api), true, true),
            (Act(ResumeAgent, Human::Api), false, true),
            (Act(Take, Human::Api), true, false),
            (Act(Take, v1()), true, false), // another human takes over: still a change
            (ViewerGone("v2"), false, false),
            (ViewerGone("v1"), true, true),
            (Act(PauseAgent, Human::Api), true, false),
        ];
        let mut c = Control::default();
        assert_eq!(c.agent_admission(), Ok(0));
        for (i, (step, moves, admitted)) in rows.into_iter().enumerate() {
            let before = c.generation();
            let t = 10 * (i as u64 + 1);
            match step {
                Act(a, who) => {
                    c.apply(a, who, t);
                }
                ViewerGone(v) => {
                    c.viewer_gone(v, t);
                }
            }
            assert_eq!(
                c.generation() != before,
                moves,
                "row {i}: generation moved?"
            );
            if moves {
                assert_eq!(c.generation(), before + 1, "row {i}: one step at a time");
            }
            match c.agent_admission() {
                Ok(g) => {
                    assert!(admitted, "row {i}: agent admitted");
                    assert_eq!(g, c.generation(), "row {i}");
                }
                Err(r) => assert!(!admitted, "row {i}: agent refused: {r}"),
            }
        }
    }
}
