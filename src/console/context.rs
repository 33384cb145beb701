//! What every console page stands on: the [`Console`] (its settings,
//! users, sessions, the followed status and control topics), and the
//! extractors a handler takes — [`Viewer`], [`Operator`] and a [`Form`]
//! whose CSRF token matches the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use rdkafka::consumer::BaseConsumer;
use subtle::ConstantTimeEq;

use super::auth::{LoginThrottle, Role, Session, Sessions, Users};
use super::views::BASE;
use crate::config::Settings;
use crate::control::Control;
use crate::kafka::follow::Followed;
use crate::status::GroupView;

/// The session cookie.
pub(super) const COOKIE: &str = "paysync_console";

/// What every page reads.
pub struct Console {
    pub(super) settings: Settings,
    pub(super) users: Users,
    pub(super) sessions: Sessions,
    pub(super) throttle: LoginThrottle,
    pub(super) group: Followed<GroupView>,
    pub(super) control: Arc<Control>,
    /// Reads the group's committed offsets and the partitions' ends.
    pub(super) offsets: Mutex<BaseConsumer>,
    /// The control connection is this console's own (standalone): closed with it.
    owns_control: bool,
}

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console.users_file is not set: the console has no open mode")]
    NoUsers,
    #[error(
        "the console needs the control topic (control.enabled): its audit log and pauses live there"
    )]
    NoControl,
    #[error(transparent)]
    Users(#[from] super::auth::UsersError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Console {
    /// Reads the users, follows the status topic, and connects to the
    /// control topic (`control`: a running pipeline's; `None`: its own).
    pub async fn open(
        settings: &Settings,
        control: Option<Arc<Control>>,
    ) -> Result<Arc<Console>, ConsoleError> {
        let users_file = settings
            .console
            .users_file
            .clone()
            .ok_or(ConsoleError::NoUsers)?;
        if !settings.control.enabled {
            return Err(ConsoleError::NoControl);
        }
        let users = Users::load(&users_file)?;
        let settings = settings.clone();
        let console = tokio::task::spawn_blocking(move || -> Result<Console, ConsoleError> {
            let offsets: BaseConsumer =
                crate::kafka::clients::tool_consumer(&settings, &settings.kafka.group_id)
                    .create()
                    .map_err(anyhow::Error::from)?;
            let owns_control = control.is_none();
            let control = match control {
                Some(control) => control,
                None => Control::open(
                    &settings,
                    &offsets,
                    crate::control::process_name("console"),
                    None,
                )
                .map_err(anyhow::Error::from)?
                .ok_or(ConsoleError::NoControl)?,
            };
            let group = crate::status::follow(&settings, &offsets).map_err(anyhow::Error::from)?;
            Ok(Console {
                sessions: Sessions::new(settings.console.session_ttl_ms),
                throttle: LoginThrottle::new(settings.console.login_attempts_per_minute),
                users,
                group,
                control,
                offsets: Mutex::new(offsets),
                owns_control,
                settings,
            })
        })
        .await
        .map_err(anyhow::Error::from)??;
        Ok(Arc::new(console))
    }

    /// The control topic as this console reads it.
    pub fn control_view(&self) -> Arc<crate::control::ControlView> {
        self.control.view()
    }

    /// Stops following the topics. Blocks.
    pub fn close(&self) {
        self.group.close();
        if self.owns_control {
            self.control.close();
        }
    }
}

pub(super) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, token)| token.to_owned())
}

/// A logged-in user of any role.
pub struct Viewer(pub Session);

/// A logged-in operator.
pub struct Operator(pub Session);

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Viewer, Response> {
        let session = cookie_token(&parts.headers).and_then(|token| console.sessions.get(&token));
        match session {
            Some(session) => Ok(Viewer(session)),
            None if parts.method == Method::GET => {
                Err(Redirect::to(&format!("{BASE}/login")).into_response())
            }
            None => Err((StatusCode::UNAUTHORIZED, "log in first").into_response()),
        }
    }
}

impl FromRequestParts<Arc<Console>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Operator, Response> {
        let Viewer(session) = Viewer::from_request_parts(parts, console).await?;
        if session.role != Role::Operator {
            return Err((
                StatusCode::FORBIDDEN,
                "refused: this needs the operator role",
            )
                .into_response());
        }
        Ok(Operator(session))
    }
}

/// A form without this session's CSRF token: refused.
pub struct StaleForm;

impl IntoResponse for StaleForm {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "refused: the form's token is missing or stale; reload the page",
        )
            .into_response()
    }
}

/// A POSTed form, with its CSRF token checked against the session.
pub struct Form(pub HashMap<String, String>);

impl Form {
    /// Checks the token; the form's fields.
    pub(super) fn checked(
        session: &Session,
        fields: HashMap<String, String>,
    ) -> Result<Form, StaleForm> {
        let token = fields.get("csrf").map(String::as_str).unwrap_or_default();
        if bool::from(token.as_bytes().ct_eq(session.csrf.as_bytes())) {
            Ok(Form(fields))
        } else {
            Err(StaleForm)
        }
    }

    pub(super) fn get(&self, name: &str) -> &str {
        self.0.get(name).map(|v| v.trim()).unwrap_or_default()
    }

    /// Why the operator acts, required for the audit.
    pub(super) fn why(&self) -> Result<String, String> {
        self.optional("why")
            .ok_or_else(|| "why: say why, for the audit".to_owned())
    }

    pub(super) fn optional(&self, name: &str) -> Option<String> {
        Some(self.get(name))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// An operator's POSTed form with its token checked: what every action takes.
pub struct Action {
    pub session: Session,
    pub form: Form,
}

impl FromRequest<Arc<Console>> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Arc<Console>) -> Result<Action, Response> {
        let (mut parts, body) = request.into_parts();
        let Operator(session) = Operator::from_request_parts(&mut parts, console).await?;
        let axum::Form(fields) = axum::Form::<HashMap<String, String>>::from_request(
            Request::from_parts(parts, body),
            console,
        )
        .await
        .map_err(IntoResponse::into_response)?;
        let form = Form::checked(&session, fields).map_err(IntoResponse::into_response)?;
        Ok(Action { session, form })
    }
}
