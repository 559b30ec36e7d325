//! The bank: accounts are objects that transfer money to each other through cohort messaging.
//! Shared by the bank examples (`examples/bank.rs`, `examples/bank_inprocess.rs`) and the tests.
//!
//! Money is conserved by every consistent cut: the sum of the balances in a committed line plus
//! the transfers recorded in transit with it equals the money the bank started with.

use async_trait::async_trait;
use cohort::checkpoint::{CheckpointStore, Manifest};
use cohort::coordinator::{Actor, Context};
use cohort::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};
use serde::{Deserialize, Serialize};

/// The recorded type name of an account's state.
pub(crate) const ACCOUNT_TYPE: &str = "bank.Account";

/// What accounts exchange.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum BankMsg {
    /// An input from outside: make `count` transfers to random accounts.
    Tick {
        /// How many transfers.
        count: u32,
    },
    /// Money from another account.
    Transfer {
        /// How much.
        amount: i64,
    },
}

/// An account's checkpointed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountState {
    /// Money held.
    pub(crate) balance: i64,
    /// Bumped on every change, so idle accounts are referenced, not rewritten.
    pub(crate) generation: u64,
    /// The account's own random stream (xorshift), checkpointed with it so that a restored
    /// account makes the same choices again.
    pub(crate) rng: u64,
}

/// One account.
pub(crate) struct Account {
    /// The checkpointed state.
    pub(crate) state: AccountState,
    index: u64,
    accounts: u64,
}

/// The id of account `i`.
pub(crate) fn account_id(i: u64) -> ObjectId {
    // "account-<n>" always passes ObjectId's rules.
    ObjectId::indexed("account", i).expect("account ids are valid")
}

impl Account {
    /// Account `index` of `accounts`, holding `balance`.
    pub(crate) fn new(index: u64, accounts: u64, balance: i64, seed: u64) -> Self {
        Self {
            state: AccountState {
                balance,
                generation: 0,
                rng: (seed ^ (index.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            },
            index,
            accounts,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.rng = x;
        x
    }
}

#[async_trait]
impl Checkpointable for Account {
    fn type_name(&self) -> &'static str {
        ACCOUNT_TYPE
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(ACCOUNT_TYPE, 1, self.state.clone()))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        state.check(ACCOUNT_TYPE, 1)?;
        self.state = state.decode()?;
        Ok(())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.state.generation)
    }
}

#[async_trait]
impl Actor for Account {
    type Message = BankMsg;

    // Its state is its own: only messages change it.
    const MESSAGE_DRIVEN: bool = true;

    async fn handle(&mut self, message: BankMsg, ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        match message {
            BankMsg::Transfer { amount } => {
                self.state.balance += amount;
                self.state.generation += 1;
            }
            BankMsg::Tick { count } => {
                for _ in 0..count {
                    if self.state.balance <= 0 || self.accounts < 2 {
                        break;
                    }
                    let mut to = self.next() % (self.accounts - 1);
                    if to >= self.index {
                        to += 1;
                    }
                    let amount =
                        1 + (self.next() % (self.state.balance.unsigned_abs() / 4 + 1)) as i64;
                    let amount = amount.min(self.state.balance);
                    // An account removed from the cohort (closed) takes no more transfers.
                    let sent = ctx
                        .address::<BankMsg>(&account_id(to))
                        .and_then(|address| ctx.send(&address, BankMsg::Transfer { amount }));
                    match sent {
                        Ok(()) => {
                            self.state.balance -= amount;
                            self.state.generation += 1;
                        }
                        Err(cohort::coordinator::Error::UnknownObject(_)) => {}
                        Err(e) => return Err(ObjectError::application(e)),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Money in one committed line: balances, in-transit transfers, and how many of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LineMoney {
    /// Sum of the balances.
    pub(crate) balances: i64,
    /// Sum of the recorded in-transit transfers.
    pub(crate) in_transit: i64,
    /// Accounts in the line.
    pub(crate) accounts: usize,
    /// Recorded in-transit messages.
    pub(crate) messages: usize,
}

impl LineMoney {
    /// Balances plus in-transit transfers.
    pub(crate) fn total(&self) -> i64 {
        self.balances + self.in_transit
    }
}

/// Reads a committed line and adds up its money.
pub(crate) async fn line_money(
    store: &CheckpointStore,
    manifest: &Manifest,
) -> anyhow::Result<LineMoney> {
    let mut money = LineMoney::default();
    for (_, state) in store.read_states(manifest).await? {
        // Not an account: a source of inputs, whose state is its read position.
        if state.tag().type_name != ACCOUNT_TYPE {
            continue;
        }
        let account: AccountState = state.decode()?;
        money.balances += account.balance;
        money.accounts += 1;
    }
    for (_, state) in store.read_in_transit(manifest).await? {
        match state.decode::<BankMsg>()? {
            BankMsg::Transfer { amount } => money.in_transit += amount,
            BankMsg::Tick { .. } => anyhow::bail!("a tick (an input) was recorded in transit"),
        }
        money.messages += 1;
    }
    Ok(money)
}
