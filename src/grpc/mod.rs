//! The gRPC administration API (`proto/vnamed/v1/admin.proto`): a thin
//! layer that forwards each call to the updater and maps its errors to
//! gRPC status codes.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::pool::AdminState;
use crate::updater::{Command, UpdateError};

pub mod v1 {
    tonic::include_proto!("vnamed.v1");
}

use v1::admin_server::{Admin, AdminServer};

/// How long a call waits for the updater before giving up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AdminService {
    updater: mpsc::Sender<Command>,
}

impl AdminService {
    pub fn server(updater: mpsc::Sender<Command>) -> AdminServer<Self> {
        AdminServer::new(Self { updater })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.updater
            .send_timeout(make(tx), CALL_TIMEOUT)
            .await
            .map_err(|_| Status::unavailable("the updater is not accepting requests"))?;
        tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| Status::deadline_exceeded("the updater did not answer in time"))?
            .map_err(|_| Status::unavailable("the updater stopped"))
    }
}

fn status_of(e: UpdateError) -> Status {
    match e {
        UpdateError::NoPool(_) | UpdateError::NoMember { .. } | UpdateError::NoZone(_) => Status::not_found(e.to_string()),
        UpdateError::Setup(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusReply>, Status> {
        let pools = self.ask(|reply| Command::Status { reply }).await?;
        let pools = pools
            .into_iter()
            .map(|p| v1::PoolStatus {
                name: p.name,
                policy: p.policy,
                zone: p.zone,
                serial: p.serial,
                answer: p.answer.iter().map(|a| a.to_string()).collect(),
                servfail: p.servfail,
                members: p
                    .members
                    .into_iter()
                    .map(|m| v1::MemberStatus {
                        id: m.id,
                        address: m.address.to_string(),
                        state: m.state,
                        admin: m.admin.as_str().into(),
                        weight: m.weight,
                        load: m.load,
                        in_answer: m.in_answer,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(v1::StatusReply { pools }))
    }

    async fn set_member(&self, req: Request<v1::SetMemberRequest>) -> Result<Response<v1::SetMemberReply>, Status> {
        let req = req.into_inner();
        let admin = match req.admin.as_deref() {
            None => None,
            Some(s) => Some(AdminState::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!("admin must be up, down or auto, not {s:?}"))
            })?),
        };
        if admin.is_none() && req.weight.is_none() {
            return Err(Status::invalid_argument("nothing to set: give admin and/or weight"));
        }
        let (pool, id, weight) = (req.pool, req.member, req.weight);
        self.ask(|reply| Command::SetMember { pool, id, admin, weight, reply }).await?.map_err(status_of)?;
        Ok(Response::new(v1::SetMemberReply {}))
    }

    async fn show_zone(&self, req: Request<v1::ShowZoneRequest>) -> Result<Response<v1::ShowZoneReply>, Status> {
        let zone = req.into_inner().zone;
        let text = self.ask(|reply| Command::ShowZone { zone, reply }).await?.map_err(status_of)?;
        Ok(Response::new(v1::ShowZoneReply { text }))
    }
}
