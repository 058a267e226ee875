//! Arrow Flight on `server.flight_listen`: gRPC streams of Arrow record batches, from the same catalog, query
//! language, identities and export pipeline as `/rows?format=arrow`.
//!
//! - `ListFlights`: one `FlightInfo` per dataset the caller may read, with its schema and row estimate.
//! - `GetFlightInfo` / `GetSchema`: a descriptor is a path (`["orders"]`, the whole dataset) or a command
//!   (`orders?select=id,amount&amount=gt.100`, a `/rows` query string); the answer's one endpoint carries a
//!   ticket signed with the cursor key, so no client can forge one.
//! - `DoGet`: the ticket's rows through the Arrow encoder, cut into IPC messages, one `FlightData` each. The
//!   export runs in the body task `/rows` uses (backpressure, stall watchdog, cancel when the caller goes
//!   away, metering); a failure mid-stream ends the call with an error status, never with a clean end.
//!
//! Identity is the HTTP API's: `authorization: Bearer <JWT or API key>` in the call's metadata. The server runs
//! on threads of its own, with its own connection pools (a connection's task lives on the runtime that opened
//! it).

mod messages;

use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use self::messages::Messages;
use crate::compress::Encoding;
use crate::dataset::{Consistency, Dataset};
use crate::db::error::OpenError;
use crate::db::replicas::Readers;
use crate::db::rows::{Rows, Source};
use crate::encode::Format;
use crate::error::ApiError;
use crate::pipeline::Pipeline;
use crate::query::{self, Endpoint, KeysetScan};
use crate::routes::caller::{Caller, bearer};
use crate::state::{AppState, Pools};
use crate::telemetry::request::RequestContext;

/// A running Flight server; [`FlightServer::stop`] ends it.
pub(crate) struct FlightServer {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl FlightServer {
    /// Serves Flight on `listener` from threads of its own, with pools of `pool_size` connections made from
    /// `connection` and `export_slots` exports at once.
    pub(crate) fn start(
        state: Arc<AppState>,
        listener: std::net::TcpListener,
        connection: crate::db::Connection,
        database: &crate::settings::DatabaseSettings,
        export_slots: usize,
    ) -> std::io::Result<FlightServer> {
        let (stop, mut stopped) = watch::channel(false);
        let database = database.clone();
        listener.set_nonblocking(true)?;
        let thread = std::thread::Builder::new()
            .name("pgspout-flight".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("pgspout-flight")
                    .enable_all()
                    .build()
                    .expect("a runtime for the Flight server");
                runtime.block_on(async move {
                    let exports = crate::db::pool(&connection, &database, database.pool_size);
                    let readers = Readers::new(exports.clone(), state.replicas.as_ref(), &database, database.pool_size);
                    let pools = Pools {
                        health: exports.clone(),
                        exports,
                        readers,
                        export_slots: Arc::new(tokio::sync::Semaphore::new(export_slots)),
                    };
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "cannot serve Arrow Flight");
                            return;
                        }
                    };
                    let service = FlightServiceServer::new(Spout {
                        state,
                        pools: Arc::new(pools),
                    });
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let served = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async move {
                            let _ = stopped.wait_for(|stopped| *stopped).await;
                        })
                        .await;
                    if let Err(error) = served {
                        tracing::error!(error = %crate::report::chain(&error), "the Arrow Flight server failed");
                    }
                });
            })?;
        Ok(FlightServer { stop, thread })
    }

    /// Stops taking calls and waits for running ones to end (exports are cut at the end of the grace period,
    /// as over HTTP).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// The Flight service.
struct Spout {
    state: Arc<AppState>,
    pools: Arc<Pools>,
}

/// What a descriptor or ticket names: a dataset and a `/rows` query string.
struct Command {
    dataset: Arc<Dataset>,
    query: String,
}

/// A call: its telemetry, and who makes it.
struct Call {
    context: RequestContext,
    caller: Caller,
    method: &'static str,
}

impl Spout {
    /// Starts a call to `method`: its request id (`x-request-id` if the caller sent a well-formed one) and
    /// its caller, from `authorization` in the metadata.
    async fn call<T>(&self, method: &'static str, request: &Request<T>) -> Result<Call, Status> {
        let metadata = request.metadata();
        let id = metadata.get("x-request-id").and_then(|v| v.to_str().ok());
        let context = RequestContext::call(self.state.metrics.clone(), id, "GRPC", &format!("flight.{method}"));
        let token = match metadata.get("authorization") {
            Some(value) => value
                .to_str()
                .map_err(|_| crate::auth::AuthError::Invalid("authorization is not text".into()))
                .and_then(bearer)
                .map(Some),
            None => Ok(None),
        };
        let caller = Caller::identify(&self.state, token).await;
        let call = |caller| Call {
            context: context.clone(),
            caller,
            method,
        };
        match caller {
            Ok(caller) => Ok(call(caller)),
            Err(error) => Err(status(&context, &error)),
        }
    }

    /// What `text` (`dataset` or `dataset?query`) names, checked as `/rows` checks its query.
    fn command(&self, text: &str) -> Result<(Command, query::Request), ApiError> {
        let (name, query) = text.split_once('?').unwrap_or((text, ""));
        let dataset = self.state.dataset(name)?;
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| ApiError::BadQuery(format!("the command's query: {e}")))?;
        if let Some((key, _)) = pairs
            .iter()
            .find(|(key, _)| matches!(key.as_str(), "format" | "compression"))
        {
            return Err(ApiError::BadQuery(format!(
                "{key}: Flight always sends Arrow record batches"
            )));
        }
        let request = query::params::parse(&dataset, Endpoint::Rows, &pairs)?;
        Ok((
            Command {
                dataset,
                query: query.to_owned(),
            },
            request,
        ))
    }

    /// The command a descriptor names: a one-element path (a dataset), or a command's text.
    fn described(&self, descriptor: &FlightDescriptor) -> Result<(Command, query::Request), ApiError> {
        let text = match (descriptor.path.as_slice(), descriptor.cmd.is_empty()) {
            ([name], true) => name.clone(),
            ([], false) => String::from_utf8(descriptor.cmd.to_vec())
                .map_err(|_| ApiError::BadQuery("the descriptor's command is not UTF-8".into()))?,
            _ => {
                return Err(ApiError::BadQuery(
                    "a descriptor is a path of one dataset's name, or a command `dataset?query`".into(),
                ));
            }
        };
        self.command(&text)
    }

    /// Refuses a dataset the caller's role may not read (401 for the anonymous role, else 403); with
    /// `estimate`, its row estimate.
    async fn check_readable(&self, call: &Call, dataset: &Dataset, estimate: bool) -> Result<Option<i64>, ApiError> {
        let begin = self.begin(call, &rows_path(&dataset.name));
        let readable = call
            .caller
            .readable_as(std::iter::once(dataset), &self.pools, &begin, estimate)
            .await?;
        match readable.into_iter().find(|(name, _)| *name == dataset.name) {
            Some((_, rows)) => Ok(rows),
            None => Err(call.caller.not_readable(&dataset.name)),
        }
    }

    /// The statements that open a transaction for `call`; `pre_request` sees the call's method and `path`,
    /// the HTTP API's path of the same data.
    fn begin(&self, call: &Call, path: &str) -> String {
        call.caller.begin_call(&self.state, &call.context, call.method, path)
    }

    /// The `FlightInfo` of a command: its schema, and one endpoint with its signed ticket.
    fn info(&self, command: &Command, request: &query::Request, rows: Option<i64>) -> Result<FlightInfo, ApiError> {
        let text = match command.query.is_empty() {
            true => command.dataset.name.clone(),
            false => format!("{}?{}", command.dataset.name, command.query),
        };
        let plan = query::plan_rows(&command.dataset, request, Format::Arrow, None);
        let schema = crate::encode::arrow_schema(&plan.columns);
        let descriptor = match command.query.is_empty() {
            true => FlightDescriptor::new_path(vec![command.dataset.name.clone()]),
            false => FlightDescriptor::new_cmd(text.clone()),
        };
        let ticket = Ticket::new(self.state.cursor_key.seal_ticket(&text));
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| ApiError::Internal(Box::new(e)))
            .map(|info| {
                info.with_descriptor(descriptor)
                    .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
                    .with_total_records(rows.unwrap_or(-1))
                    .with_ordered(true)
            })
    }

    /// Opens the rows of a ticket's command and streams them as Flight data.
    async fn get(&self, call: &Call, command: Command, request: query::Request) -> Result<DataStream, ApiError> {
        let state = &self.state;
        let dataset = &*command.dataset;
        let format = Format::Arrow;
        let slot = tokio::time::timeout(state.acquire_timeout, self.pools.export_slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Open(OpenError::ExportsBusy))?
            .expect("the semaphore is never closed");
        let (source, columns) = match request.consistency(dataset) {
            Consistency::Snapshot => {
                let plan = query::plan_rows(dataset, &request, format, None);
                let columns = plan.columns.clone();
                (Source::Statement(plan), columns)
            }
            Consistency::Chunked => {
                let scan = KeysetScan::new(dataset, &request, format, state.batch_rows);
                let columns = scan.columns();
                (Source::Batches(scan), columns)
            }
        };
        let begin = self.begin(call, &rows_path(&dataset.name));
        let (rows, _) = Rows::open(&self.pools.readers, &begin, source, None).await?;
        let encoder = format.encoder(&columns).map_err(|e| ApiError::Internal(Box::new(e)))?;
        let mut pipeline = Pipeline::new(rows, encoder, Encoding::Identity, &state.limits, true)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        pipeline.encode_first()?;
        let context = call.context.clone();
        let meter = context
            .metrics()
            .export(context.clone(), &dataset.name, format.extension(), "identity");
        let label = format!("{}.arrows (Flight)", dataset.name);
        let body = crate::body::stream(pipeline, slot, state.chunking, label, state.cut.clone(), meter);
        Ok(flight_data(body, context))
    }
}

/// The HTTP API's path of a dataset's rows.
fn rows_path(dataset: &str) -> String {
    format!("/v1/datasets/{dataset}/rows")
}

/// A `DoGet` answer.
type DataStream = BoxStream<'static, Result<FlightData, Status>>;

/// The IPC stream of `body` as Flight data: one message each, ended by an error status unless the stream
/// ended whole (its end-of-stream marker read, nothing after it).
fn flight_data(
    body: impl futures::Stream<Item = Result<bytes::Bytes, crate::error::StreamError>> + Send + 'static,
    context: RequestContext,
) -> DataStream {
    struct Cutter<S> {
        body: std::pin::Pin<Box<S>>,
        messages: Messages,
        context: RequestContext,
        done: bool,
    }
    let cutter = Cutter {
        body: Box::pin(body),
        messages: Messages::default(),
        context,
        done: false,
    };
    futures::stream::unfold(cutter, |mut cutter| async move {
        loop {
            if cutter.done {
                return None;
            }
            match cutter.messages.next_message() {
                Ok(Some(data)) => {
                    cutter.context.sent(data.data_header.len() + data.data_body.len());
                    return Some((Ok(data), cutter));
                }
                Ok(None) => {}
                Err(error) => {
                    cutter.done = true;
                    tracing::error!(%error, "cannot cut the Arrow stream into Flight messages");
                    cutter.context.answered(500, false);
                    return Some((Err(Status::internal("the export failed inside pgspout")), cutter));
                }
            }
            match cutter.body.next().await {
                Some(Ok(bytes)) => cutter.messages.push(&bytes),
                Some(Err(error)) => {
                    cutter.done = true;
                    cutter.context.answered(500, false);
                    let message = format!("the export failed after it began: {error}; the stream is incomplete");
                    return Some((Err(Status::aborted(message)), cutter));
                }
                None if cutter.messages.ended() => {
                    cutter.context.answered(200, true);
                    return None;
                }
                None => {
                    cutter.done = true;
                    cutter.context.answered(500, false);
                    return Some((Err(Status::internal("the export ended without its end marker")), cutter));
                }
            }
        }
    })
    .boxed()
}

/// The gRPC status of an error before any data: the code its HTTP status stands for, the problem's detail,
/// and the request id in the metadata. Recorded on the call.
fn status(context: &RequestContext, error: &ApiError) -> Status {
    use actix_web::ResponseError as _;
    let http = error.status_code();
    context.answered(http.as_u16(), false);
    if http.is_server_error() {
        tracing::warn!(request_id = context.id(), error = %crate::report::chain(error), "a Flight call failed");
    }
    let detail = error.detail();
    let mut status = match http.as_u16() {
        400 | 406 | 422 => Status::invalid_argument(detail),
        401 => Status::unauthenticated(detail),
        403 => Status::permission_denied(detail),
        404 => Status::not_found(detail),
        503 => Status::unavailable(format!("{detail}; retry in a second")),
        504 => Status::deadline_exceeded(detail),
        _ => Status::internal(detail),
    };
    if let Ok(id) = context.id().parse() {
        status.metadata_mut().insert("x-request-id", id);
    }
    status
}

#[tonic::async_trait]
impl FlightService for Spout {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = DataStream;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: send `authorization: Bearer <token>` with each call",
        ))
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let call = self.call("ListFlights", &request).await?;
        let listed = async {
            let published = self.state.published();
            let begin = self.begin(&call, "/v1/datasets");
            let readable = call
                .caller
                .readable_as(published.catalog.iter(), &self.pools, &begin, true)
                .await?;
            readable
                .into_iter()
                .map(|(name, rows)| {
                    let (command, request) = self.command(&name)?;
                    self.info(&command, &request, rows)
                })
                .collect::<Result<Vec<_>, ApiError>>()
        };
        match listed.await {
            Ok(infos) => {
                call.context.answered(200, true);
                Ok(Response::new(futures::stream::iter(infos.into_iter().map(Ok)).boxed()))
            }
            Err(error) => Err(status(&call.context, &error)),
        }
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let call = self.call("GetFlightInfo", &request).await?;
        let info = async {
            let (command, parsed) = self.described(request.get_ref())?;
            let estimate = command.query.is_empty();
            let rows = self.check_readable(&call, &command.dataset, estimate).await?;
            self.info(&command, &parsed, rows)
        };
        match info.await {
            Ok(info) => {
                call.context.answered(200, true);
                Ok(Response::new(info))
            }
            Err(error) => Err(status(&call.context, &error)),
        }
    }

    async fn poll_flight_info(&self, _request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "use GetFlightInfo: a FlightInfo is ready at once",
        ))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let call = self.call("GetSchema", &request).await?;
        let schema = async {
            let (command, parsed) = self.described(request.get_ref())?;
            self.check_readable(&call, &command.dataset, false).await?;
            let plan = query::plan_rows(&command.dataset, &parsed, Format::Arrow, None);
            let schema = crate::encode::arrow_schema(&plan.columns);
            let options = arrow_ipc::writer::IpcWriteOptions::default();
            SchemaResult::try_from(SchemaAsIpc::new(&schema, &options)).map_err(|e| ApiError::Internal(Box::new(e)))
        };
        match schema.await {
            Ok(schema) => {
                call.context.answered(200, true);
                Ok(Response::new(schema))
            }
            Err(error) => Err(status(&call.context, &error)),
        }
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let call = self.call("DoGet", &request).await?;
        let stream = async {
            let text = self
                .state
                .cursor_key
                .open_ticket(&request.get_ref().ticket)
                .map_err(|_| {
                    ApiError::BadQuery("ticket: not a ticket this server issued (or it was altered)".into())
                })?;
            let (command, parsed) = self.command(&text)?;
            self.get(&call, command, parsed).await
        };
        match stream.await {
            Ok(stream) => {
                // Data follows, as a 200's body would over HTTP; the stream's end records whether it ended whole.
                call.context.answered(200, false);
                Ok(Response::new(stream))
            }
            Err(error) => Err(status(&call.context, &call.caller.refine(error))),
        }
    }

    async fn do_put(&self, _request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("pgspout only reads: exports run read-only"))
    }

    async fn do_action(&self, _request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("pgspout has no Flight actions"))
    }

    async fn list_actions(&self, _request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(futures::stream::empty().boxed()))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("pgspout only reads: exports run read-only"))
    }
}
