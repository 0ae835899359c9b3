//! jitbridge: ticket approvals in ITSM tools become just-in-time, time-limited privilege grants.
//!
//! The modules follow the flow of one ticket (see DESIGN.md):
//! webhook → [`ingress`] → inbox ([`store`]) → [`connectors`] parse → [`ticket::TicketEvent`]
//! → [`mapping`] + [`policy`] → [`grants`] ledger → [`outbox`] jobs → [`providers`] / writebacks,
//! with [`scheduler`] revoking at each deadline and [`audit`] recording every step.

pub mod admin; // admin API, health and metrics endpoints
pub mod app; // wires the components, runs the workers, shuts down gracefully
pub mod audit; // append-only, hash-chained audit records
pub mod clock; // the one source of "now", injectable for tests
pub mod config; // files -> validated configuration
pub mod connectors; // one folder per ITSM: verify, parse, confirm, write back
pub mod explain; // dry run of a payload through parser, mappings and policy
pub mod failpoint; // crash points for tests, compiled only with the `failpoints` feature
pub mod grants; // the grant state machine and the service that drives it
pub mod http; // JSON error bodies shared by every endpoint
pub mod identity; // the identity map: ITSM accounts -> directory subjects and groups
pub mod inbox; // drains the inbox: parse deliveries, hand events to the grant service
pub mod ingress; // POST /webhooks/{connector}: authenticate, dedupe, commit to the inbox
pub mod mapping; // admin mapping files: ticket event -> grant intent
pub mod outbox; // durable provider and writeback jobs with retry schedules
pub mod policy; // who may approve what, where, for how long (pure)
pub mod providers; // elevation providers: signed webhook, command
pub mod reload; // swaps mappings, connectors and providers of a running daemon, all or nothing
pub mod scheduler; // expiry: revoke every active grant at its deadline
pub mod server; // HTTP/1.1 accept loop: header timeout, connection cap, graceful drain
pub mod signatures; // HMAC and Standard Webhooks signing and verification (pure)
pub mod store; // the Store trait and its SQLite / PostgreSQL backends
pub mod ticket; // the normalized ticket event every connector produces
