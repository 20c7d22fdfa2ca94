//! The local API of the agent (`Agent` gRPC service on `listen`): `Resolve` (with a `brief`
//! fast path: a map lookup and a clone of a pre-built answer), `WatchRoute` and `Routes`,
//! all answered from the current [`RouteBook`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use topology::PackageType;

use crate::route_book::{BookProblem, RouteBook, TypeRoute};

/// The `Agent` service implementation.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// The current routes.
    pub book: watch::Receiver<Arc<RouteBook>>,
    /// Ends open `WatchRoute` streams at shutdown.
    pub shutdown: CancellationToken,
}

fn check_type(t: &str) -> Result<PackageType, Status> {
    PackageType::new(t).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn problem_status(p: &BookProblem) -> Status {
    match p {
        BookProblem::NoCopy | BookProblem::NoTopology => Status::unavailable(p.to_string()),
        BookProblem::UnknownHost(_) => Status::failed_precondition(p.to_string()),
    }
}

/// The answer for a type no host runs (and no forward port names): no manager.
fn nobody(book: &RouteBook, t: &str, brief: bool) -> pb::RouteExplanation {
    pb::RouteExplanation {
        r#type: if brief { String::new() } else { t.to_owned() },
        revision: book.revision,
        stale: book.stale,
        ..Default::default()
    }
}

fn update_of(book: &RouteBook, t: &str, route: Option<&Arc<TypeRoute>>) -> pb::RouteUpdate {
    match route {
        Some(r) => r.update(book.revision, book.stale),
        None => pb::RouteUpdate {
            r#type: t.to_owned(),
            revision: book.revision,
            stale: book.stale,
            reason: book
                .problem
                .as_ref()
                .map_or_else(|| "no host runs this type".to_owned(), |p| p.to_string()),
            ..Default::default()
        },
    }
}

/// The services an agent serves on its local API, as gRPC reflection lists them. The
/// descriptor set of `proto` also holds the managers' services: they are not listed.
pub const SERVED_SERVICES: [&str; 4] = [
    pb::agent_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// gRPC server reflection of the local API, v1 and v1alpha, listing [`SERVED_SERVICES`];
/// both can describe every listed service.
#[allow(clippy::type_complexity)]
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        SERVED_SERVICES.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                ),
            |b, name| b.with_service_name(*name),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::RouteUpdate, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentApi {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::RouteExplanation>, Status> {
        let req = request.into_inner();
        let book = self.book.borrow().clone();
        if let Some(p) = &book.problem {
            check_type(&req.r#type)?;
            return Err(problem_status(p));
        }
        // The pre-built answers are recomputed with every book, staleness included.
        let answer = match book.routes.get(req.r#type.as_str()) {
            Some(r) if req.brief => r.brief.clone(),
            Some(r) => r.full.clone(),
            None => {
                check_type(&req.r#type)?;
                nobody(&book, &req.r#type, req.brief)
            }
        };
        Ok(Response::new(answer))
    }

    type WatchRouteStream = UpdateStream;

    async fn watch_route(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let t = check_type(&request.into_inner().r#type)?;
        let mut rx = self.book.clone();
        let shutdown = self.shutdown.clone();
        let stream = async_stream_of(
            move |tx: tokio::sync::mpsc::Sender<Result<pb::RouteUpdate, Status>>| async move {
                let mut last: Option<pb::RouteUpdate> = None;
                loop {
                    let update = {
                        let book = rx.borrow_and_update().clone();
                        let mut u = update_of(&book, t.as_str(), book.get(t.as_str()));
                        if last.is_none() {
                            u.reason = "initial".to_owned();
                        }
                        u
                    };
                    let changed = match &last {
                        None => true,
                        Some(l) => {
                            (&l.chosen, &l.endpoint, &l.route, l.stale)
                                != (
                                    &update.chosen,
                                    &update.endpoint,
                                    &update.route,
                                    update.stale,
                                )
                        }
                    };
                    if changed {
                        if tx.send(Ok(update.clone())).await.is_err() {
                            return;
                        }
                        last = Some(update);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            },
        );
        Ok(Response::new(stream))
    }

    async fn routes(
        &self,
        _request: Request<pb::RoutesRequest>,
    ) -> Result<Response<pb::RoutesResponse>, Status> {
        // Always answers: with no usable copy, the listed types show no manager and the
        // problem as their reason.
        let book = self.book.borrow().clone();
        Ok(Response::new(pb::RoutesResponse {
            revision: book.revision,
            stale: book.stale,
            routes: book
                .routes
                .values()
                .map(|r| r.update(book.revision, book.stale))
                .collect(),
        }))
    }
}

/// A stream fed by a spawned producer through a small channel (back-pressure to the producer).
fn async_stream_of<F, Fut>(producer: F) -> UpdateStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::RouteUpdate, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
