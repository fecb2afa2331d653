//! What a forking proxy does with its branches' responses (RFC 3261 section 16.7), as pure
//! state: provisional responses and every 2xx go upstream at once, the first 2xx cancels
//! the other branches, and when every branch has a final non-2xx answer the best one goes
//! upstream. The front-end (`mod.rs`) keeps one per forked request and does the sending.

/// What to do with a branch's response.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send it upstream now.
    Forward,
    /// Send it upstream now, and CANCEL these branches (the first 2xx of an INVITE).
    ForwardAndCancel(Vec<usize>),
    /// Keep it: it may be the best final answer (ACK it, for an INVITE).
    Hold,
    /// Every branch has answered: send upstream the response held for this branch.
    ForwardHeld(usize),
    /// Nothing to send (a 100, a response after the request was answered).
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Branch {
    /// No response yet.
    Calling,
    /// A provisional response came.
    Proceeding,
    /// A final response came, with this code.
    Done(u16),
}

/// The branches of one forked request.
#[derive(Debug)]
pub struct Fork {
    branches: Vec<Branch>,
    /// A final answer went upstream (a 2xx, or the best of the rest).
    answered: bool,
    /// The best final non-2xx answer so far: (branch, code).
    best: Option<(usize, u16)>,
    invite: bool,
}

/// Whether final answer `a` is better than `b` for the caller (RFC 3261 section 16.7 step
/// 6): a 6xx wins; else the lowest class, and within 4xx the ones the caller can act on
/// (401, 407, 415, 420, 484) first.
fn better(a: u16, b: u16) -> bool {
    let rank = |c: u16| match c {
        600..=699 => 0,
        401 | 407 | 415 | 420 | 484 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    rank(a) < rank(b)
}

impl Fork {
    /// A request sent on `n` branches; `invite`: the first 2xx cancels the others.
    pub fn new(n: usize, invite: bool) -> Fork {
        Fork {
            branches: vec![Branch::Calling; n],
            answered: false,
            best: None,
            invite,
        }
    }

    /// Branch `i` answered `code`.
    pub fn response(&mut self, i: usize, code: u16) -> Step {
        let Some(b) = self.branches.get(i).copied() else {
            return Step::Drop;
        };
        if code < 200 {
            if b == Branch::Calling {
                self.branches[i] = Branch::Proceeding;
            }
            return if code == 100 || self.answered || matches!(b, Branch::Done(_)) {
                Step::Drop
            } else {
                Step::Forward
            };
        }
        if code < 300 {
            // Every 2xx of an INVITE goes upstream (each makes a dialog); a non-INVITE
            // gets one final answer.
            self.branches[i] = Branch::Done(code);
            if self.answered && !self.invite {
                return Step::Drop;
            }
            let first = !self.answered;
            self.answered = true;
            let pending = self.pending();
            return if first && self.invite && !pending.is_empty() {
                Step::ForwardAndCancel(pending)
            } else {
                Step::Forward
            };
        }
        if matches!(b, Branch::Done(_)) {
            return Step::Drop; // a retransmission
        }
        self.branches[i] = Branch::Done(code);
        if self.answered {
            return Step::Drop;
        }
        if self.best.is_none_or(|(_, c)| better(code, c)) {
            self.best = Some((i, code));
        }
        self.finish().unwrap_or(Step::Hold)
    }

    /// Branch `i` will not answer (no response in time): as a 408 from it.
    pub fn timed_out(&mut self, i: usize) -> Step {
        match self.branches.get(i) {
            Some(Branch::Done(_)) | None => Step::Drop,
            _ => match self.response(i, 408) {
                Step::Hold => Step::Drop,
                s => s,
            },
        }
    }

    /// When every branch is done and none answered 2xx: the held best answer.
    fn finish(&mut self) -> Option<Step> {
        if self.answered || !self.pending().is_empty() {
            return None;
        }
        let (i, _) = self.best?;
        self.answered = true;
        Some(Step::ForwardHeld(i))
    }

    /// Branches without a final answer yet (to CANCEL when the caller cancels).
    pub fn pending(&self) -> Vec<usize> {
        (0..self.branches.len())
            .filter(|i| !matches!(self.branches[*i], Branch::Done(_)))
            .collect()
    }

    /// Branches that sent no response at all (to send the request again on).
    pub fn silent(&self) -> Vec<usize> {
        (0..self.branches.len())
            .filter(|i| self.branches[*i] == Branch::Calling)
            .collect()
    }

    /// Whether a final answer went upstream.
    pub fn answered(&self) -> bool {
        self.answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_2xx_goes_up_and_cancels_the_rest() {
        let mut f = Fork::new(3, true);
        assert_eq!(f.response(0, 100), Step::Drop);
        assert_eq!(f.response(0, 180), Step::Forward);
        assert_eq!(f.response(1, 180), Step::Forward);
        assert_eq!(f.response(1, 200), Step::ForwardAndCancel(vec![0, 2]));
        // The others answer 487 to the CANCEL: nothing more goes up.
        assert_eq!(f.response(0, 487), Step::Drop);
        assert_eq!(f.response(2, 487), Step::Drop);
        // A 2xx racing the CANCEL still goes up (it makes a dialog the caller ends).
        let mut f = Fork::new(2, true);
        assert_eq!(f.response(0, 200), Step::ForwardAndCancel(vec![1]));
        assert_eq!(f.response(1, 200), Step::Forward);
        assert!(f.answered());
    }

    #[test]
    fn without_a_2xx_the_best_final_answer_goes_up_once_all_are_in() {
        let mut f = Fork::new(3, true);
        assert_eq!(f.response(0, 486), Step::Hold);
        assert_eq!(f.response(0, 486), Step::Drop, "retransmission");
        assert_eq!(f.response(1, 503), Step::Hold);
        assert_eq!(f.response(2, 603), Step::ForwardHeld(2), "6xx wins");
        let mut f = Fork::new(2, true);
        assert_eq!(f.response(0, 500), Step::Hold);
        assert_eq!(f.response(1, 404), Step::ForwardHeld(1), "4xx before 5xx");
        let mut f = Fork::new(2, true);
        assert_eq!(f.response(0, 404), Step::Hold);
        assert_eq!(
            f.response(1, 407),
            Step::ForwardHeld(1),
            "a challenge first"
        );
    }

    #[test]
    fn a_silent_branch_counts_as_408() {
        let mut f = Fork::new(2, true);
        assert_eq!(f.silent(), vec![0, 1]);
        assert_eq!(f.response(0, 486), Step::Hold);
        assert_eq!(f.silent(), vec![1]);
        assert_eq!(f.timed_out(1), Step::ForwardHeld(0));
        assert_eq!(f.timed_out(1), Step::Drop);
        let mut f = Fork::new(1, true);
        assert_eq!(f.timed_out(0), Step::ForwardHeld(0), "the 408 itself");
    }

    #[test]
    fn a_non_invite_gets_one_final_answer() {
        let mut f = Fork::new(2, false);
        assert_eq!(f.response(0, 200), Step::Forward);
        assert_eq!(f.response(1, 200), Step::Drop);
        assert_eq!(f.pending(), Vec::<usize>::new());
        assert_eq!(f.response(5, 200), Step::Drop, "no such branch");
    }
}
