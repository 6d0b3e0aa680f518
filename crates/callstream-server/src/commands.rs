//! Executing a customer's command on a live call: the one path shared by the call socket and
//! `POST /v1/calls/{id}/commands`.

use axum::http::StatusCode;
use callstream_bus::{CommandError, CommandOutcome, CommandRequest};
use callstream_core::{CallId, Command, WorkspaceId};

use crate::error::ApiError;
use crate::routes::load_call;
use crate::state::AppState;

/// Sends `command` to the runtime serving the call and waits for its answer.
///
/// # Errors
/// 400 `invalid_command` (e.g. bad DTMF digits), 404 for an unknown or foreign call, 409
/// `call_ended`, 503 `runtime_unavailable` when no runtime is connected (at once, no waiting),
/// 503 `runtime_busy` (with `Retry-After: 1`) when the runtime's inbox is full,
/// 504 `runtime_timeout` when it does not answer within `command_timeout_secs`, 422
/// `command_refused` when the runtime refuses (its reason in the message).
pub async fn execute(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
    command: Command,
) -> Result<(), ApiError> {
    command
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_command", e.to_string()))?;
    let current = load_call(state, workspace, call).await?;
    if !current.status.is_active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "call_ended",
            format!("the call has already ended ({})", current.status),
        ));
    }
    let request = CommandRequest {
        command_id: format!(
            "cmd_{}",
            callstream_core::EventId::new()
                .as_str()
                .trim_start_matches("evt_")
        ),
        workspace: workspace.clone(),
        call: call.clone(),
        command,
    };
    let outcome = state
        .commands()
        .send(request, state.config().command_timeout())
        .await;
    state.metrics().command(match &outcome {
        Ok(CommandOutcome::Done) => "done",
        Ok(CommandOutcome::Refused { .. }) => "refused",
        Err(CommandError::NoRuntime | CommandError::Disconnected) => "no_runtime",
        Err(CommandError::Busy) => "busy",
        Err(CommandError::Timeout(_)) => "timeout",
    });
    match outcome {
        Ok(CommandOutcome::Done) => Ok(()),
        Ok(CommandOutcome::Refused {
            error_code,
            message,
        }) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "command_refused",
            format!("the call runtime refused the command ({error_code}): {message}"),
        )),
        Err(e @ (CommandError::NoRuntime | CommandError::Disconnected)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "runtime_unavailable",
            e.to_string(),
        )),
        // Connected but behind: a distinct, retryable answer.
        Err(CommandError::Busy) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "runtime_busy",
            "the call runtime is busy (its inbox of commands is full); retry in a moment",
        )
        .retry_after(1)),
        Err(e @ CommandError::Timeout(_)) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "runtime_timeout",
            e.to_string(),
        )),
    }
}
