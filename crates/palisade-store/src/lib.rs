//! Palisade persistence. SQLite today, behind the [`Store`] facade so a PostgreSQL backend can
//! follow without touching callers. Every mutation that changes configuration writes its audit
//! row in the same transaction, so a change and its audit record land together or not at all.
#![forbid(unsafe_code)]

mod alerts;
mod console;
mod filter;
mod identity;
mod mcp;
mod migrations;
mod oauth;
mod oidc;
mod requests;
mod scans;
mod store;
mod webhooks;
mod writer;

pub use alerts::{ALERT_STATUSES, AlertFilter, AlertPage};
pub use console::{DashboardData, ProxyTraffic, SeriesPoint, UserInfo};
pub use identity::{
    ApiKeyRow, BudgetStatus, GroupRow, KeyOptions, UsageQuery, UsageRow, budget_of,
};
pub use mcp::ToolVersion;
pub use oauth::{
    MAX_CLIENTS, MAX_ROTATIONS, OAuthClientInfo, OAuthClientRow, RefreshGrant, RefreshUse,
    UserStamp,
};
pub use oidc::{IdentityProviderRow, ProviderAccount, ProviderUser};
pub use requests::{RequestFilter, RequestPage};
pub use scans::ScanRow;
pub use store::{
    Actor, AuditEntry, AuditFilter, ProxyRow, SealedUpdate, Store, StoreError, UserRow,
};
pub use webhooks::WebhookRow;
pub use writer::{LogSink, LogWriter, WriterStats};
