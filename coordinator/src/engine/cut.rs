//! The participant's side of the consistent cut: Lai–Yang colouring with Mattern-style
//! counters.
//!
//! Every message carries its sender's colour: the last round in which the sender captured.
//! With round `r` active, a receiver decides:
//!
//! | message colour | receiver has captured for `r` | then |
//! |---|---|---|
//! | `r` | no | capture first, then deliver: otherwise the receipt of a message sent after the sender's cut would be in the line (an orphan) |
//! | `< r` | yes | deliver, and record the message as channel state: it was sent before the sender's cut and received after the receiver's (in transit) |
//! | otherwise | | deliver |
//!
//! Colours of aborted rounds force nothing, because only the active round's colour does.
//! Messages from outside the cohort carry no colour and are not counted.

use super::Round;

/// What a receiver must do with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// Handle it.
    Deliver,
    /// Capture for `round` first, then handle it.
    CaptureFirst {
        /// The active round the message is coloured with.
        round: Round,
    },
    /// Handle it, and record it as in-transit for `round`.
    InTransit {
        /// The active round whose cut the message crossed.
        round: Round,
    },
}

/// One participant's colour and message counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutState {
    /// The last round this participant captured in.
    pub colour: Round,
    /// Messages sent to cohort members, ever (restored with the line).
    pub sent: u64,
    /// Messages received from cohort members, ever (restored with the line).
    pub received: u64,
}

impl CutState {
    /// Counts one message sent and returns the colour to stamp on it and its sequence number
    /// (the sender's count, from 1).
    pub fn on_send(&mut self) -> (Round, u64) {
        self.sent += 1;
        (self.colour, self.sent)
    }

    /// Classifies a message from a cohort member coloured `colour`, with `active` the round in
    /// flight (if any). Does not count it: call [`received`](Self::received) once it is
    /// handled, after any capture it required.
    pub fn classify(&self, colour: Round, active: Option<Round>) -> Receipt {
        match active {
            Some(r) if colour == r && self.colour < r => Receipt::CaptureFirst { round: r },
            Some(r) if colour < r && self.colour == r => Receipt::InTransit { round: r },
            _ => Receipt::Deliver,
        }
    }

    /// Counts one message from a cohort member as received.
    pub fn received(&mut self) {
        self.received += 1;
    }

    /// Marks the capture for `round`.
    pub fn captured(&mut self, round: Round) {
        self.colour = self.colour.max(round);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let r = Round(5);
        let fresh = CutState {
            colour: Round(4),
            ..Default::default()
        };
        let captured = CutState {
            colour: r,
            ..Default::default()
        };
        assert_eq!(
            fresh.classify(r, Some(r)),
            Receipt::CaptureFirst { round: r }
        );
        assert_eq!(fresh.classify(Round(3), Some(r)), Receipt::Deliver);
        assert_eq!(
            captured.classify(Round(4), Some(r)),
            Receipt::InTransit { round: r }
        );
        assert_eq!(captured.classify(r, Some(r)), Receipt::Deliver);
        // No round active: nothing is forced or recorded, whatever the colours.
        assert_eq!(fresh.classify(r, None), Receipt::Deliver);
        assert_eq!(captured.classify(Round(1), None), Receipt::Deliver);
        // A colour of an aborted round (older than the active one) never forces.
        assert_eq!(fresh.classify(Round(4), Some(r)), Receipt::Deliver);
    }

    #[test]
    fn counters_and_colour() {
        let mut s = CutState::default();
        assert_eq!(s.on_send(), (Round(0), 1));
        s.captured(Round(2));
        assert_eq!(s.on_send(), (Round(2), 2));
        s.captured(Round(1)); // never goes back
        assert_eq!(s.colour, Round(2));
        s.received();
        assert_eq!((s.sent, s.received), (2, 1));
    }
}
