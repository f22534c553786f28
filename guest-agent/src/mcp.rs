//! MCP server (streamable HTTP at `/mcp`, same bearer token): a `computer` tool with exactly
//! the actions of `POST /v1/computer`, an `exec` tool, and `screenshot` for clients that want
//! a tool with no arguments. Tools call the same functions as the HTTP handlers.

use crate::app::App;
use crate::computer::{perform, ShotQuery, ACTIONS};
use crate::exec::ExecRequest;
use crate::http::ApiError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Clone)]
pub struct Mcp {
    app: Arc<App>,
}

fn schema(v: Value) -> Arc<serde_json::Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

fn tools(app: &App) -> Vec<Tool> {
    let (w, h) = app.cfg.display_size;
    vec![
        Tool::new(
            "computer",
            format!(
                "Use the mouse and keyboard of a {w}x{h} desktop and take screenshots (Anthropic computer-use actions). \
                 Coordinates are pixels of the screenshot."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": ACTIONS},
                    "coordinate": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                    "start_coordinate": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                    "text": {"type": "string", "description": "text to type, or an xdotool key chord such as ctrl+s for key/hold_key"},
                    "key": {"type": "string", "description": "modifier held during a click or scroll"},
                    "scroll_direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
                    "scroll_amount": {"type": "integer", "minimum": 0},
                    "duration": {"type": "number", "minimum": 0},
                    "region": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}
                },
                "required": ["action"]
            })),
        ),
        Tool::new(
            "exec",
            "Run a shell command in the machine and return its exit code, stdout and stderr.",
            schema(json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string"},
                    "cwd": {"type": "string"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "timeout_ms": {"type": "integer", "minimum": 1}
                },
                "required": ["command"]
            })),
        ),
        Tool::new("screenshot", "Take a screenshot of the desktop (PNG).", schema(json!({"type": "object", "properties": {}}))),
        Tool::new(
            "chapter",
            "Mark a chapter of this session's recording for the reviewer: what you are about to show or just showed. \
             Recorded with a screenshot; the replay and the exported evidence are split by chapters.",
            schema(json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 200},
                    "description": {"type": "string", "maxLength": 4000},
                    "proves": {"type": "string", "description": "what this chapter shows works"}
                },
                "required": ["title"]
            })),
        ),
    ]
}

/// A tool error is a 200 with text, which the HTTP layer's JSON-error middleware never sees:
/// redacted here (an exec's cwd or a computer action's text may hold a secret).
fn tool_error(app: &App, e: ApiError) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(
        app.timeline
            .redactor
            .redact(&format!("{}: {}", e.code, e.message)),
    )])
    .into()
}

fn result(v: Value) -> CallToolResponse {
    let mut content = Vec::new();
    if let Some(out) = v.get("output").and_then(Value::as_str) {
        content.push(ContentBlock::text(out.to_string()));
    }
    if let Some(img) = v.get("base64_image").and_then(Value::as_str) {
        content.push(ContentBlock::image(img.to_string(), "image/png"));
    }
    if content.is_empty() {
        content.push(ContentBlock::text(if v.get("exit_code").is_some() {
            v.to_string()
        } else {
            "done".into()
        }));
    }
    CallToolResult::success(content).into()
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("porthole-agent", env!("CARGO_PKG_VERSION"))
                .with_title("Porthole guest agent"),
        )
    }

    async fn list_tools(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools(&self.app)))
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = Value::Object(req.arguments.unwrap_or_default());
        Ok(match req.name.as_ref() {
            "computer" => match perform(&self.app, &args, &ShotQuery::default()).await {
                Ok(v) => result(v),
                Err(e) => tool_error(&self.app, e),
            },
            "screenshot" => match perform(
                &self.app,
                &json!({"action": "screenshot"}),
                &ShotQuery::default(),
            )
            .await
            {
                Ok(v) => result(v),
                Err(e) => tool_error(&self.app, e),
            },
            // MCP is the coding agent's interface: its exec always waits on the control lock.
            "exec" => match serde_json::from_value::<ExecRequest>(args) {
                Ok(r) => match crate::exec::agent_may_exec(&self.app, &r) {
                    Err(e) => tool_error(&self.app, e),
                    Ok(()) => match crate::exec::perform(&self.app, r).await {
                        Ok(v) => result(v),
                        Err(e) => tool_error(&self.app, e),
                    },
                },
                Err(e) => tool_error(
                    &self.app,
                    ApiError::bad_request(format!("exec arguments: {e}")),
                ),
            },
            "chapter" => match crate::vendors::chapter(&self.app, &args).await {
                Ok(ev) => CallToolResult::success(vec![ContentBlock::text(
                    serde_json::to_string(&ev).unwrap_or_default(),
                )])
                .into(),
                Err(e) => tool_error(&self.app, e),
            },
            other => {
                return Err(McpError::invalid_params(
                    format!(
                        "unknown tool '{other}'; tools are computer, exec, screenshot, chapter"
                    ),
                    None,
                ))
            }
        })
    }
}

pub fn service(app: Arc<App>) -> StreamableHttpService<Mcp, LocalSessionManager> {
    // Host validation protects local servers from DNS rebinding; ours is always behind the
    // bearer token and is reached by address from other machines, so we allow any host.
    let mut cfg = StreamableHttpServerConfig::default();
    cfg.allowed_hosts = vec![];
    cfg.max_request_body_bytes = crate::http::MAX_BODY;
    StreamableHttpService::new(
        move || Ok(Mcp { app: app.clone() }),
        Arc::new(LocalSessionManager::default()),
        cfg,
    )
}
