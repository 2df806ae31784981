//! DeleteConnection: `DELETE /connections/{clientId}`, an operator disconnecting an MQTT client,
//! wherever in the service it is connected.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Caller;
use super::query::{self, Params};
use super::{ApiError, ApiState, ErrorBody};
use crate::auth::Action;

/// The longest client id, in characters, as AWS IoT's DeleteConnection takes it.
const MAX_CLIENT_ID_CHARS: usize = 128;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DeleteConnectionParams {
    /// `true` ends the client's session with the connection: its subscriptions and queued
    /// messages are gone, persistent or not. `false` (the default) keeps a persistent session
    /// for the client's next connection; a clean session ends anyway.
    #[param(value_type = Option<bool>)]
    clean_session: Option<String>,
    /// `true` keeps the connection's Will (last will and testament) from being published.
    /// `false` (the default) publishes it, as when a connection is lost.
    #[param(value_type = Option<bool>)]
    prevent_will_message: Option<String>,
}

/// Disconnects a connected MQTT client, on whichever node of the service it is connected to.
/// An MQTT 5 client gets DISCONNECT 0x98 (Administrative action) first; a 3.1.1 client's
/// connection is closed.
#[utoipa::path(
    delete,
    path = "/connections/{clientId}",
    operation_id = "DeleteConnection",
    tag = "connections",
    params(
        ("clientId" = String, Path, description = "The MQTT client id, percent-encoded (as the AWS SDKs send it); 1 to 128 characters, not starting with `$`", min_length = 1, max_length = 128, pattern = r"^[^$\u0000][^\u0000]*$"),
        DeleteConnectionParams,
    ),
    responses(
        (status = 200, description = "The client's connection is being closed (an empty body)"),
        (status = 400, description = "InvalidRequestException: an empty or too long client id, one starting with `$`, or a cleanSession or preventWillMessage other than true or false", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: no credentials (when principals are configured)", body = ErrorBody),
        (status = 403, description = "ForbiddenException: unknown or wrong credentials, or the policy does not allow iot:DeleteConnection on client/<clientId>", body = ErrorBody),
        (status = 404, description = "ResourceNotFoundException: no client with this id is connected", body = ErrorBody),
        (status = 429, description = "ThrottlingException: the caller's DeleteConnection rate (--rate-delete-connection) is used up", body = ErrorBody),
        (status = 500, description = "InternalFailureException: the node the client is connected to could not be asked (it did not answer, or the database that says which node it is did not)", body = ErrorBody),
    )
)]
pub async fn delete_connection(
    State(state): State<ApiState>,
    caller: Caller,
    client_id: Result<Path<String>, PathRejection>,
    params: Result<Params<DeleteConnectionParams>, ApiError>,
) -> Result<(), ApiError> {
    let Path(client_id) = client_id
        .map_err(|_| ApiError::invalid("the client id is not valid UTF-8 once percent-decoded"))?;
    check_client_id(&client_id)?;
    let Params(params) = params?;
    let clean_session = query::flag(params.clean_session.as_deref(), "cleanSession")?;
    let prevent_will = query::flag(params.prevent_will_message.as_deref(), "preventWillMessage")?;
    caller.authorize_client(Action::DeleteConnection, &client_id)?;
    let disconnected = state
        .broker
        .disconnect_client(&client_id, clean_session, prevent_will)
        .await
        .map_err(|e| ApiError::PeerFailure(e.to_string()))?;
    if disconnected {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no client with id {client_id:?} is connected"
        )))
    }
}

/// AWS IoT's rule for the id (1 to 128 characters, not starting with `$`), and MQTT's: no
/// U+0000.
fn check_client_id(client_id: &str) -> Result<(), ApiError> {
    if client_id.is_empty() {
        return Err(ApiError::invalid("the client id is empty"));
    }
    if client_id.chars().count() > MAX_CLIENT_ID_CHARS {
        return Err(ApiError::invalid(format!(
            "the client id is longer than {MAX_CLIENT_ID_CHARS} characters"
        )));
    }
    if client_id.starts_with('$') {
        return Err(ApiError::invalid("the client id cannot start with '$'"));
    }
    if client_id.contains('\0') {
        return Err(ApiError::invalid("the client id contains U+0000"));
    }
    Ok(())
}
