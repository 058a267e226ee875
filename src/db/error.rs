//! Why rows could not be opened, classified by the status a client should get.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// Why an export could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Every connection stayed busy for the whole acquire timeout.
    #[error("every database connection is busy")]
    PoolExhausted,
    /// Every export slot stayed busy for the whole acquire timeout.
    #[error("the maximum number of concurrent exports is running")]
    ExportsBusy,
    /// No connection could be made, or the server is shutting down or full.
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No replica is healthy, and `database.replica_fallback = "refuse"`.
    #[error("no read replica is healthy, and replica_fallback = \"refuse\"")]
    NoReplica,
    /// The query was cancelled by a conflict it may not meet again: a serialization failure, a deadlock, or
    /// on a replica a recovery conflict (replayed changes that the query's snapshot still needed).
    #[error("the query was cancelled by a conflict; try again")]
    Conflict(#[source] tokio_postgres::Error),
    /// A request value does not parse as its column's type.
    #[error("query parameter {parameter:?}: {message}")]
    InvalidValue {
        /// The query parameter.
        parameter: String,
        /// Postgres's message, which quotes the value and names the type.
        message: String,
    },
    /// A summary's plan costs more than `query.max_cost`.
    #[error(
        "query parameter \"select\": the planner estimates this summary at cost {cost:.0}, above query.max_cost \
         ({max}); filter it further"
    )]
    TooCostly {
        /// The plan's estimated total cost.
        cost: f64,
        /// `query.max_cost`.
        max: f64,
    },
    /// The query ran into `statement_timeout`.
    #[error("the query exceeded the statement timeout")]
    StatementTimeout(#[source] tokio_postgres::Error),
    /// The database refused the query for lack of privileges.
    #[error("the database role may not read this dataset")]
    Forbidden(#[source] tokio_postgres::Error),
    /// The connecting role may not switch to the request's role, or it does not exist.
    #[error("{0}")]
    RoleSwitch(String),
    /// `auth.pre_request` refused the request (the message it raised).
    #[error("{0}")]
    Refused(String),
    /// Any other failure of the query.
    #[error("the query failed")]
    Query(#[source] tokio_postgres::Error),
}

impl From<PoolError> for OpenError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => OpenError::PoolExhausted,
            PoolError::Backend(error) => OpenError::from(error),
            other => OpenError::Unavailable(Box::new(other)),
        }
    }
}

impl From<tokio_postgres::Error> for OpenError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(code) = error.code() else {
            // No SQLSTATE: the connection itself failed.
            return OpenError::Unavailable(Box::new(error));
        };
        if *code == SqlState::QUERY_CANCELED {
            OpenError::StatementTimeout(error)
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
            OpenError::Conflict(error)
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            OpenError::Forbidden(error)
        } else if code.code().starts_with("53") // insufficient resources, e.g. too many connections
            || code.code().starts_with("57P")   // admin shutdown, crash shutdown, cannot connect now
            || code.code().starts_with("08")
        {
            OpenError::Unavailable(Box::new(error))
        } else {
            OpenError::Query(error)
        }
    }
}

impl OpenError {
    /// Classifies a failure of the statements that open a transaction: switching to the request's role
    /// (403 naming the missing GRANT) and `pre_request` raising (403 with its message, unless its SQLSTATE
    /// has a meaning of its own) are told apart from other failures.
    pub(crate) fn from_begin(error: tokio_postgres::Error) -> OpenError {
        let Some(db) = error.as_db_error() else {
            return OpenError::from(error);
        };
        let message = db.message();
        if let Some(role) = message.strip_prefix("permission denied to set role ") {
            return OpenError::RoleSwitch(format!(
                "pgspout's login role may not switch to role {role}: run GRANT {role} TO <pgspout's login role>"
            ));
        }
        if *db.code() == SqlState::INVALID_PARAMETER_VALUE
            && message.starts_with("role \"")
            && message.ends_with("does not exist")
        {
            return OpenError::RoleSwitch(format!("the request's {message}"));
        }
        if *db.code() == SqlState::RAISE_EXCEPTION || db.code().code().starts_with("28") {
            return OpenError::Refused(message.to_owned());
        }
        OpenError::from(error)
    }

    /// Classifies the failure of a value's type check: the value is the client's mistake (a bad number, a
    /// malformed array, a domain's CHECK, a tsquery syntax error) unless the database itself failed.
    pub(crate) fn from_check(parameter: &str, error: tokio_postgres::Error) -> OpenError {
        match error.as_db_error() {
            Some(db) if is_value_error(db.code()) => OpenError::InvalidValue {
                parameter: parameter.to_owned(),
                message: db.message().to_owned(),
            },
            _ => OpenError::from(error),
        }
    }
}

/// SQLSTATEs a type's input function raises for a value it cannot take: data exceptions (22), integrity
/// violations (23, a domain's CHECK), and syntax errors (42, e.g. in tsquery) other than missing privileges.
fn is_value_error(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("22") || code.starts_with("23") || (code.starts_with("42") && code != "42501")
}
