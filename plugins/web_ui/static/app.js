// mami chat page: plain JavaScript, no framework, no build step.
// Talks to the native API (Bearer token) and to /ws/chat (single-use tickets).
// Replies are Markdown, rendered by markdown.js with the vendored libraries.

import { copyText, renderMarkdown } from "./markdown.js";

const TOKEN_KEY = "mami.token";
const DRAFT_KEY = "mami.draft";
const CONVERSATION_KEY = "mami.conversation";
const STORED_KEYS = [TOKEN_KEY, DRAFT_KEY, CONVERSATION_KEY];  // Sign out clears them all
const FINAL_IMAGE_STATES = new Set(["succeeded", "placeholder", "failed"]);
const PING_EVERY_MS = 25000;
const RECONNECT_MAX_MS = 5000;
const IMAGE_POLL_MS = 1000;
const CONFLICT_RETRIES = 30;
const CONFLICT_RETRY_MS = 300;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), announce: $("announce"), alert: $("alert"), alertText: $("alert-text"),
  alertClose: $("alert-close"), signin: $("signin"), signinForm: $("signin-form"),
  tokenInput: $("token-input"), app: $("app"), signOut: $("sign-out"), menu: $("menu-button"),
  whoami: $("whoami"),
  sidebar: $("sidebar"), newChat: $("new-chat"), conversations: $("conversations"),
  memoriesPanel: $("memories-panel"), memories: $("memories"),
  documentsPanel: $("documents-panel"), documents: $("documents"),
  uploadForm: $("upload-form"), uploadFile: $("upload-file"),
  messages: $("messages"), composer: $("composer"), input: $("composer-input"),
  send: $("send"), stop: $("stop"),
  search: $("search"), uploadProgress: $("upload-progress"), chatTitle: $("chat-title"),
  modelSelect: $("model-select"), settingsButton: $("settings-button"),
  settingsPanel: $("settings-panel"), settingSystem: $("setting-system"),
  settingTemperature: $("setting-temperature"), settingMaxTokens: $("setting-max-tokens"),
  settingsReset: $("settings-reset"), welcome: $("welcome"), welcomeModel: $("welcome-model"),
  suggestions: $("suggestions"),
};
const SEARCH_DELAY_MS = 250;
const SUGGESTIONS = [
  "Explain what a Python generator is, with a short example.",
  "Write a Markdown table comparing SQLite and PostgreSQL.",
  "What do my uploaded documents say? Summarise them.",
  "Give me three ideas for a weekend coding project.",
];

const state = {
  token: null,
  socket: null,
  reconnectTimer: null,
  attempts: 0,
  conversationId: null,
  // The reply in progress: {sentText, message, retries, bubble, error}; bubble is null
  // until the server's "start".
  reply: null,
  images: new Map(),
  conversation: null,  // the open conversation as the API returns it (title, settings)
  conversations: new Map(),  // id -> conversation, as last listed
  models: [],
  defaultModel: null,
  search: "",
  searchTimer: null,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---------------------------------------------------------------- helpers

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function element(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function listOf(body) {
  if (Array.isArray(body)) return body;
  return (body && (body.data || body.items)) || [];
}

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
}

// kind "connection": the alert goes away by itself once the socket is open again.
function showAlert(text, kind = "") {
  ui.alertText.textContent = text;
  ui.alert.dataset.kind = kind;
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
  ui.alertText.textContent = "";
}

function announce(text) {
  ui.announce.textContent = text;
}

function describe(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error.message}`;
  if (error.status === 0) return "Disconnected: the server cannot be reached.";
  if (error.status === 401) return `Unauthorized: ${error.message}`;
  if (error.status === 403) return `Forbidden: ${error.message}`;
  if (error.status === 413) return `Too large: ${error.message}`;
  if (error.status === 429) return `Rate limited: ${error.message}. Wait a moment and try again.`;
  if (error.status === 503) return `Unavailable: ${error.message}`;
  return error.message;
}

// ---------------------------------------------------------------- HTTP API

// state.token: null when signed out, "" when the server needs no token ([core] auth = false).
function signedIn() {
  return state.token !== null;
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(method, path, { json, form } = {}) {
  const headers = authHeaders();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch {
    throw new ApiError(0, "the server cannot be reached");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || response.statusText || "error";
    const error = new ApiError(response.status, message);
    if (response.status === 401) {
      signOut(state.token ? `${describe(error)}. Sign in again with a valid token.` : "");
    }
    throw error;
  }
  return data;
}

async function fetchBlob(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new ApiError(response.status, `could not load ${path}`);
  return response.blob();
}

// ---------------------------------------------------------------- sign-in

// The owner a token signs in as, or null when the server does not accept it.
async function ownerOf(token) {
  try {
    const response = await fetch("/api/me", { headers: { Authorization: `Bearer ${token}` } });
    return response.ok ? (await response.json()).owner : null;
  } catch {
    return null;
  }
}

// A ?token= link signs in; one that differs from the stored token asks first, naming
// both owners (a link from someone else must not silently switch accounts).
async function takeTokenFromAddress() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (!token) return;
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  const stored = localStorage.getItem(TOKEN_KEY);
  if (stored && stored !== token) {
    const [current, offered] = await Promise.all([ownerOf(stored), ownerOf(token)]);
    if (current !== null) {
      if (offered === null) {
        showAlert(`The link's token is not valid; you are still signed in as ${current}.`);
        return;
      }
      const question = `This link signs you in as "${offered}". You are signed in as ` +
        `"${current}". Switch to "${offered}"?`;
      if (!window.confirm(question)) return;
      localStorage.removeItem(CONVERSATION_KEY);
      localStorage.removeItem(DRAFT_KEY);
    }
  }
  localStorage.setItem(TOKEN_KEY, token);
}

async function showWhoAmI() {
  try {
    const me = await api("GET", "/api/me");
    state.defaultModel = me.default_model || null;
    ui.whoami.textContent = me.auth ? `Signed in as ${me.owner}` : `${me.owner} (no sign-in)`;
    ui.whoami.title = me.token_name ? `token "${me.token_name}"` +
      (me.expires_at ? `, expires ${new Date(me.expires_at).toLocaleString()}` : "") : "";
    ui.whoami.hidden = false;
  } catch {
    ui.whoami.hidden = true;
  }
}

function signOut(message) {
  for (const key of STORED_KEYS) localStorage.removeItem(key);
  ui.input.value = "";
  ui.whoami.hidden = true;
  ui.whoami.textContent = "";
  state.token = null;
  clearTimeout(state.reconnectTimer);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close(1000, "signed out");
  ui.app.hidden = true;
  ui.signOut.hidden = true;
  ui.signin.hidden = false;
  setStatus("offline", "Not signed in");
  if (message) showAlert(message);
  ui.tokenInput.focus();
}

async function signIn(token) {
  state.token = token;
  try {
    await loadConversations();
  } catch (error) {
    if (error.status !== 401) {
      showAlert(`${describe(error)} Trying again by itself.`);
      setStatus("offline", "Disconnected");
      state.reconnectTimer = setTimeout(() => signIn(token), RECONNECT_MAX_MS);
    }
    return;
  }
  if (token) localStorage.setItem(TOKEN_KEY, token);
  hideAlert();
  ui.signin.hidden = true;
  ui.app.hidden = false;
  ui.signOut.hidden = !token;
  await showWhoAmI();
  await loadModels();
  const remembered = localStorage.getItem(CONVERSATION_KEY);
  if (remembered && ui.conversations.querySelector(`[data-id="${CSS.escape(remembered)}"]`)) {
    await openConversation(remembered);
  } else {
    showConversation();
  }
  connect();
  ui.input.focus();
}

// ---------------------------------------------------------------- conversations

function conversationLabel(conversation) {
  if (conversation.title) return conversation.title;
  const when = new Date(conversation.created_at);
  return `Chat of ${when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}`;
}

async function loadConversations() {
  const query = state.search ? `?q=${encodeURIComponent(state.search)}` : "";
  const list = listOf(await api("GET", `/api/conversations${query}`));
  ui.conversations.replaceChildren();
  state.conversations = new Map(list.map((conversation) => [conversation.id, conversation]));
  if (!list.length) {
    const text = state.search ? `No conversation contains "${state.search}".` : "No conversations yet.";
    ui.conversations.append(element("li", { class: "empty", text }));
  }
  for (const conversation of list) {
    ui.conversations.append(conversationItem(conversation));
    if (conversation.id === state.conversationId) {
      state.conversation = conversation;
      showConversationTitle();
    }
  }
}

function conversationItem(conversation) {
  const label = conversationLabel(conversation);
  const open = element("button", {
    type: "button", class: "link grow", "data-id": conversation.id, text: label,
    onclick: () => openConversation(conversation.id),
  });
  const rename = element("button", {
    type: "button", class: "secondary small", text: "Rename",
    "aria-label": `Rename conversation: ${label}`,
    onclick: () => startRename(conversation, item),
  });
  const remove = element("button", {
    type: "button", class: "secondary small", text: "Delete",
    "aria-label": `Delete conversation: ${label}`,
    onclick: () => deleteConversation(conversation.id, label),
  });
  const item = element("li", { "data-conversation": conversation.id }, open, rename, remove);
  if (conversation.id === state.conversationId) item.setAttribute("aria-current", "true");
  return item;
}

function startRename(conversation, item) {
  const input = element("input", {
    type: "text", class: "grow", maxlength: "200", value: conversation.title,
    "aria-label": "New name of the conversation",
  });
  const cancel = () => item.replaceWith(conversationItem(conversation));
  const form = element("form", { class: "rename grow" }, input,
    element("button", { type: "submit", class: "small", text: "Save" }),
    element("button", { type: "button", class: "secondary small", text: "Cancel", onclick: cancel }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const changed = await api("PATCH", `/api/conversations/${encodeURIComponent(conversation.id)}`,
        { json: { title: input.value } });
      announce(`Conversation renamed: ${conversationLabel(changed)}`);
      if (changed.id === state.conversationId) {
        state.conversation = changed;
        showConversationTitle();
      }
    } catch (error) {
      showAlert(describe(error));
    }
    await loadConversations().catch((error) => showAlert(describe(error)));
    ui.conversations.querySelector(`[data-id="${CSS.escape(conversation.id)}"]`)?.focus();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      cancel();
    }
  });
  item.replaceChildren(form);
  input.focus();
  input.select();
}

function searchConversations() {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(() => {
    state.search = ui.search.value.trim();
    loadConversations().catch((error) => showAlert(describe(error)));
  }, SEARCH_DELAY_MS);
}

function markCurrentConversation() {
  for (const item of ui.conversations.querySelectorAll("li[data-conversation]")) {
    const current = item.dataset.conversation === state.conversationId;
    if (current) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }
}

function setConversation(id) {
  state.conversationId = id;
  if (id) localStorage.setItem(CONVERSATION_KEY, id);
  else localStorage.removeItem(CONVERSATION_KEY);
  markCurrentConversation();
}

async function openConversation(id) {
  if (state.reply) return showAlert("Wait for the reply to finish, or stop it, first.");
  let messages;
  let conversation;
  try {
    const path = `/api/conversations/${encodeURIComponent(id)}`;
    [messages, conversation] = await Promise.all([
      api("GET", `${path}/messages`).then(listOf), api("GET", path),
    ]);
  } catch (error) {
    return showAlert(describe(error));
  }
  setConversation(id);
  state.conversation = conversation;
  ui.messages.replaceChildren();
  state.images.clear();
  let steps = [];
  for (const message of messages) {
    if (message.role === "tool" || (message.tool_calls || []).length) {
      steps.push(message);  // shown under the answer that follows
      continue;
    }
    const bubble = addMessage(message.role, message.content);
    bubble.dataset.messageId = message.id;
    if (message.role === "assistant") {
      for (const step of steps) storedToolStep(bubble, step);
      steps = [];
      if (message.reply_to) bubble.dataset.replyTo = message.reply_to;
      noteStatus(bubble, message.status, message.error);
      showSources(bubble, message.sources);
      followImages(bubble);
    }
  }
  showConversation();
  closeMenu();
  scrollToEnd(true);
  ui.input.focus();
}

function newChat() {
  if (state.reply) return showAlert("Wait for the reply to finish, or stop it, first.");
  clearChat();
  closeMenu();
  ui.input.focus();
}

function clearChat() {
  setConversation(null);
  state.conversation = null;
  ui.messages.replaceChildren();
  state.images.clear();
  showConversation();
}

async function deleteConversation(id, label) {
  const current = id === state.conversationId;
  if (current && state.reply) return showAlert("Wait for the reply to finish, or stop it, first.");
  if (!window.confirm(`Delete the conversation "${label}" and all its messages? ` +
    "This cannot be undone.")) return;
  const items = [...ui.conversations.querySelectorAll("li[data-conversation]")];
  const position = items.findIndex((item) => item.dataset.conversation === id);
  try {
    await api("DELETE", `/api/conversations/${encodeURIComponent(id)}`);
    announce(`Conversation deleted: ${label}`);
  } catch (error) {
    if (error.status !== 404) return showAlert(describe(error));
    showAlert(`Already gone: the conversation "${label}" was deleted elsewhere.`);
  }
  if (current) clearChat();
  await loadConversations().catch((error) => showAlert(describe(error)));
  // The button that had focus is gone: keep keyboard users in the list.
  const next = ui.conversations.querySelectorAll("li[data-conversation] button.link");
  (next[Math.min(position, next.length - 1)] || ui.newChat).focus();
}

// ---------------------------------------------------------------- message list

function nearEnd() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd(force = false) {
  if (force || nearEnd()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// The Markdown source of each assistant bubble (what Copy copies).
const sources = new WeakMap();

function addMessage(role, text) {
  const who = role === "user" ? "You" : "mami";
  const assistant = role === "assistant";
  const bubble = element(
    "li", { class: `message ${role}`, "data-role": role },
    element("span", { class: "who", text: who }),
    assistant ? element("div", { class: "text markdown" }) : element("span", { class: "text", text }),
  );
  if (assistant) setReplyText(bubble, text);
  addActions(bubble);
  const follow = nearEnd();
  ui.messages.append(bubble);
  ui.welcome.hidden = true;
  scrollToEnd(follow);
  refreshActions();
  return bubble;
}

function replyText(bubble) {
  return sources.get(bubble) ?? bubble.querySelector(".text").textContent;
}

function setReplyText(bubble, text) {
  sources.set(bubble, text);
  renderMarkdown(bubble.querySelector(".text"), text);
}

// Streamed text is rendered at most once per animation frame (and once more at the end).
const pendingRenders = new Set();
let renderFrame = 0;

function scheduleRender(bubble) {
  pendingRenders.add(bubble);
  if (!renderFrame) renderFrame = requestAnimationFrame(flushRenders);
}

function flushRenders() {
  renderFrame = 0;
  const follow = nearEnd();
  for (const bubble of pendingRenders) renderMarkdown(bubble.querySelector(".text"), replyText(bubble));
  pendingRenders.clear();
  scrollToEnd(follow);
}

function noteStatus(bubble, status, error) {
  bubble.dataset.status = status || "complete";
  const notes = {
    interrupted: "Stopped before the end.",
    error: `The reply failed${error ? `: ${error}` : "."}`,
    streaming: "This reply was still being written.",
  };
  const text = notes[status];
  if (!text) return;
  if (status === "error") bubble.classList.add("error");
  bubble.querySelector(".note")?.remove();
  bubble.append(element("span", { class: "note", text }));
}

// ---------------------------------------------------------------- WebSocket

function socketOpen() {
  return state.socket !== null && state.socket.readyState === WebSocket.OPEN;
}

async function connect() {
  clearTimeout(state.reconnectTimer);
  if (!signedIn() || state.socket) return;
  setStatus("connecting", "Connecting…");
  let protocols = [];  // without a token the server needs no ticket
  if (state.token) {
    try {
      protocols = (await api("POST", "/api/ws-ticket")).protocols;
    } catch (error) {
      if (error.status === 403) scheduleReconnect(originMessage());
      else if (error.status !== 401) scheduleReconnect(describe(error));
      return;
    }
  }
  if (!signedIn() || state.socket) return;
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${window.location.host}/ws/chat`, protocols);
  state.socket = socket;
  socket.addEventListener("open", () => {
    if (state.socket !== socket) return;
    state.attempts = 0;
    setStatus("online", "Connected");
    if (ui.alert.dataset.kind === "connection") hideAlert();
    updateButtons();
    loadConversations().catch(() => {});
  });
  socket.addEventListener("message", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    handleEvent(data);
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    closedReply("Connection lost before the reply finished.");
    updateButtons();
    if (!signedIn()) return;
    scheduleReconnect(closeMessage(event.code, event.reason));
  });
}

function originMessage() {
  const origin = window.location.origin;
  return `Forbidden: this server does not accept chat from ${origin}. Open the address ` +
    `mami serve printed, or add "${origin}" to allowed_origins in plugins.toml.`;
}

function closeMessage(code, reason) {
  const why = reason ? ` (${reason})` : "";
  switch (code) {
    case 4401: return `Unauthorized: the server refused the chat connection${why}.`;
    case 4403: return originMessage();
    case 4408: return "The chat connection was not signed in in time.";
    case 1008: return `Rate limited: the server closed the chat connection${why}.`;
    case 1013: return "The server cannot check sign-ins right now.";
    default: return "Disconnected from the server.";
  }
}

function scheduleReconnect(message) {
  clearTimeout(state.reconnectTimer);
  if (!signedIn()) return;
  const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** state.attempts);
  state.attempts += 1;
  const seconds = Math.max(1, Math.round(delay / 1000));
  setStatus("offline", `Disconnected: reconnecting in ${seconds} s…`);
  if (message) {
    const sentence = /[.!?]$/.test(message) ? message : `${message}.`;
    showAlert(`${sentence} Reconnecting by itself; what you typed is kept.`, "connection");
  }
  state.reconnectTimer = setTimeout(connect, delay);
}

function send(event) {
  if (!socketOpen()) return false;
  state.socket.send(JSON.stringify(event));
  return true;
}

function handleEvent(event) {
  switch (event.type) {
    case "start": return replyStarted(event);
    case "delta": return replyDelta(event.text || "");
    case "end": return replyEnded(event);
    case "error": return serverError(event);
    case "image": return showImage(event);
    case "tool_call": return toolCalled(event);
    case "tool_result": return toolResulted(event);
    case "sources": return replySources(event.sources);
    case "warnings": return replyWarnings(event.warnings);
    default: return undefined;
  }
}

// ---------------------------------------------------------------- tool calls

// Each tool call the server ran: a collapsed <details> under the reply with the tool's
// name and time, opening to its arguments and result.
function toolBox(bubble, id, name) {
  let list = bubble.querySelector(".tools");
  if (!list) {
    list = element("div", { class: "tools" });
    bubble.querySelector(".text").after(list);
  }
  const found = Array.from(list.children).find((item) => item.dataset.callId === id);
  if (found) return found;
  const item = element(
    "details", { class: "tool", "data-call-id": id },
    element("summary", {}, element("span", { class: "tool-name", text: `Tool: ${name}` }),
      element("span", { class: "tool-time", text: " (running…)" })),
    element("div", { class: "tool-label", text: "Arguments" }),
    element("pre", { class: "tool-arguments" }),
    element("div", { class: "tool-label", text: "Result" }),
    element("pre", { class: "tool-result" }),
  );
  list.append(item);
  return item;
}

function showToolResult(item, content, isError, duration) {
  item.querySelector(".tool-result").textContent = content;
  item.querySelector(".tool-time").textContent = duration == null ? ""
    : ` (${duration < 1 ? `${Math.round(duration * 1000)} ms` : `${duration.toFixed(1)} s`})`;
  if (isError) item.classList.add("error");
}

function toolCalled(event) {
  const bubble = state.reply && state.reply.bubble;
  if (!bubble) return;
  toolBox(bubble, event.id, event.name).querySelector(".tool-arguments").textContent =
    event.arguments;
  setStatus("online", `Running ${event.name}…`);
}

function toolResulted(event) {
  const bubble = state.reply && state.reply.bubble;
  if (!bubble) return;
  showToolResult(toolBox(bubble, event.id, event.name), event.content, event.is_error,
    event.duration);
  setStatus("online", "Replying…");
}

function storedToolStep(bubble, message) {
  for (const call of message.tool_calls || []) {
    toolBox(bubble, call.id, call.name).querySelector(".tool-arguments").textContent =
      call.arguments;
  }
  if (message.role === "tool") {
    showToolResult(toolBox(bubble, message.tool_call_id, message.tool_name || "tool"),
      message.content, message.status === "error", message.duration);
  }
}

// ---------------------------------------------------------------- a reply

// Without arguments: sends what is in the message box. With replaceFrom (the id of a
// stored user message): edit and resend; that message and everything after it are
// replaced (the server truncates the conversation there).
function submitMessage({ text: given, replaceFrom } = {}) {
  const text = (given ?? ui.input.value).trim();
  if (!text || state.reply) return false;
  const message = {
    type: "message", content: text, conversation_id: state.conversationId,
    client_message_id: newId(),
  };
  if (replaceFrom) message.replace_from = replaceFrom;
  if (!send(message)) {
    showAlert("Not connected: your message is kept and can be sent once the connection is back.",
      "connection");
    return false;
  }
  if (replaceFrom) {
    const from = ui.messages.querySelector(`li[data-message-id="${CSS.escape(replaceFrom)}"]`);
    while (from && from.nextElementSibling) from.nextElementSibling.remove();
    from?.remove();
  }
  const userBubble = addMessage("user", text);
  state.reply = { sentText: text, message, retries: 0, bubble: null, userBubble, replaceFrom };
  refreshActions();
  if (given !== undefined) {
    scrollToEnd(true);
    updateButtons();
    setStatus("online", "Waiting for the reply…");
    return true;
  }
  ui.input.value = "";
  saveDraft();
  scrollToEnd(true);
  updateButtons();
  setStatus("online", "Waiting for the reply…");
  return true;
}

function replyStarted(event) {
  if (!state.reply) state.reply = { sentText: "", message: null, retries: 0, bubble: null };
  // A new conversation joins the list when the reply ends: no request competes with it.
  if (event.conversation_id) setConversation(event.conversation_id);
  const bubble = addMessage("assistant", "");
  bubble.setAttribute("aria-busy", "true");
  bubble.dataset.messageId = event.message_id || "";
  if (event.user_message_id) {
    bubble.dataset.replyTo = event.user_message_id;
    if (state.reply.userBubble) state.reply.userBubble.dataset.messageId = event.user_message_id;
  }
  state.reply.bubble = bubble;
  setStatus("online", "Replying…");
  updateButtons();
}

function replyDelta(text) {
  const bubble = state.reply && state.reply.bubble;
  if (!bubble) return;
  sources.set(bubble, replyText(bubble) + text);
  scheduleRender(bubble);
}

function replyEnded(event) {
  const reply = state.reply;
  state.reply = null;
  if (reply && reply.bubble) {
    pendingRenders.delete(reply.bubble);
    setReplyText(reply.bubble, replyText(reply.bubble));
    reply.bubble.removeAttribute("aria-busy");
    noteStatus(reply.bubble, event.status, reply.error);
    followImages(reply.bubble);
    announce(`mami: ${reply.bubble.querySelector(".text").textContent}`);
  }
  setStatus(socketOpen() ? "online" : "offline", socketOpen() ? "Connected" : "Disconnected");
  updateButtons();
  refreshActions();
  loadConversations().catch(() => {});
  if (ui.memoriesPanel.open) setTimeout(() => loadMemories().catch(() => {}), 1500);
}

function serverError(event) {
  const error = new ApiError(event.code || 500, event.message || "the server reported an error");
  const reply = state.reply;
  if (reply && reply.bubble) {
    reply.error = event.message;  // the "end" that follows marks the bubble
    return;
  }
  if (reply && event.code === 409 && reply.retries < CONFLICT_RETRIES) {
    // The server is still finishing the previous turn; the same client_message_id
    // makes sending again safe.
    reply.retries += 1;
    setTimeout(() => {
      if (state.reply === reply && !reply.bubble && !send(reply.message)) {
        closedReply("Connection lost before the reply started.");
      }
    }, CONFLICT_RETRY_MS);
    return;
  }
  if (reply) {
    // The turn never started: give the text back so nothing typed is lost.
    state.reply = null;
    if (!ui.input.value.trim()) ui.input.value = reply.sentText;
    ui.messages.lastElementChild?.remove();
    saveDraft();
    updateButtons();
    refreshActions();
    setStatus("online", "Connected");
    // An edit removed messages from the page that the server kept: show them again.
    if (reply.replaceFrom && state.conversationId) reloadConversation();
  }
  showAlert(describe(error));
}

function closedReply(note) {
  const reply = state.reply;
  if (!reply) return;
  state.reply = null;
  if (reply.bubble) {
    pendingRenders.delete(reply.bubble);
    setReplyText(reply.bubble, replyText(reply.bubble));
    reply.bubble.removeAttribute("aria-busy");
    reply.bubble.dataset.status = "interrupted";
    reply.bubble.querySelector(".note")?.remove();
    reply.bubble.append(element("span", { class: "note", text: note }));
  } else if (!ui.input.value.trim()) {
    ui.input.value = reply.sentText;
    ui.messages.lastElementChild?.remove();
    saveDraft();
  }
  refreshActions();
}

function stopReply() {
  if (!state.reply) return;
  if (send({ type: "cancel" })) {
    ui.stop.disabled = true;
    setStatus("online", "Stopping…");
  }
}

function updateButtons() {
  ui.send.disabled = !socketOpen() || state.reply !== null;
  ui.stop.disabled = state.reply === null || !socketOpen();
}

async function reloadConversation() {
  const id = state.conversationId;
  if (!id || state.reply) return;
  await openConversation(id);
}

// ---------------------------------------------------------------- reply actions

// Copy on every reply; Regenerate on the last one; Edit on the user's messages. The
// buttons exist from the start and refreshActions shows or enables those that apply.
function addActions(bubble) {
  const actions = element("div", { class: "actions" });
  if (bubble.dataset.role === "assistant") {
    actions.append(
      element("button", {
        type: "button", class: "secondary small action-copy", text: "Copy",
        "aria-label": "Copy this reply", onclick: (event) => copyReply(bubble, event.currentTarget),
      }),
      element("button", {
        type: "button", class: "secondary small action-regenerate", text: "Regenerate",
        "aria-label": "Write this reply again", hidden: "",
        onclick: () => regenerate(bubble),
      }),
    );
  } else if (bubble.dataset.role === "user") {
    actions.append(element("button", {
      type: "button", class: "secondary small action-edit", text: "Edit",
      "aria-label": "Edit this message and send it again", onclick: () => startEdit(bubble),
    }));
  }
  bubble.append(actions);
}

function refreshActions() {
  const busy = state.reply !== null;
  const replies = ui.messages.querySelectorAll("li[data-role=assistant]");
  const last = replies[replies.length - 1];
  for (const bubble of replies) {
    const button = bubble.querySelector(".action-regenerate");
    if (button) button.hidden = busy || bubble !== last || !bubble.dataset.replyTo;
  }
  for (const button of ui.messages.querySelectorAll("li[data-role=user] .action-edit")) {
    button.disabled = busy || !button.closest("li").dataset.messageId;
  }
}

async function copyReply(bubble, button) {
  const ok = await copyText(replyText(bubble));
  button.textContent = ok ? "Copied" : "Copy failed";
  announce(ok ? "Reply copied." : "The reply could not be copied.");
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function regenerate(bubble) {
  const userId = bubble.dataset.replyTo;
  const user = userId && ui.messages.querySelector(`li[data-message-id="${CSS.escape(userId)}"]`);
  if (!user || state.reply) return;
  submitMessage({ text: user.querySelector(".text").textContent, replaceFrom: userId });
}

function startEdit(bubble) {
  if (state.reply || !bubble.dataset.messageId) return;
  const textNode = bubble.querySelector(".text");
  const original = textNode.textContent;
  const area = element("textarea", { rows: "3", "aria-label": "Edit your message" });
  area.value = original;
  const restore = () => {
    form.remove();
    textNode.hidden = false;
    bubble.querySelector(".actions").hidden = false;
  };
  const form = element("form", { class: "edit" }, area,
    element("span", { class: "hint", text: "Sending replaces this message and the replies after it." }),
    element("div", { class: "edit-buttons" },
      element("button", { type: "submit", class: "small", text: "Send" }),
      element("button", { type: "button", class: "secondary small", text: "Cancel", onclick: restore })));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = area.value.trim();
    if (!text) return;
    if (!submitMessage({ text, replaceFrom: bubble.dataset.messageId })) restore();
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      restore();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  textNode.hidden = true;
  bubble.querySelector(".actions").hidden = true;
  textNode.after(form);
  area.focus();
}

// ---------------------------------------------------------------- warnings

// What the reply had to do without (documents or memories whose store failed): a small
// notice under it, so an answer that ignored them does not pass for one that read them.
// Not stored: a reloaded conversation shows the answer without it.
function replyWarnings(list) {
  const bubble = state.reply && state.reply.bubble;
  if (!bubble || !Array.isArray(list) || !list.length) return;
  bubble.querySelector(".warnings")?.remove();
  const box = element("div", { class: "warnings", role: "note" },
    ...list.map((text) => element("p", { class: "warning", text: `Note: ${String(text)}` })));
  bubble.querySelector(".actions").before(box);
}

// ---------------------------------------------------------------- citations

function replySources(list) {
  const reply = state.reply;
  if (!reply) return;
  reply.sources = list;
  if (reply.bubble) showSources(reply.bubble, list);
}

function sourceLabel(source) {
  const page = source.page ? `, page ${source.page}` : "";
  return `${source.source}${page}`;
}

// Numbered citations under a reply; each opens its passage, file and page.
function showSources(bubble, list) {
  bubble.querySelector(".sources")?.remove();
  if (!Array.isArray(list) || !list.length) return;
  const passage = element("div", { class: "passage", hidden: "", role: "region",
    "aria-live": "polite" });
  const buttons = list.map((source, index) => {
    const n = source.n ?? index + 1;
    return element("button", {
      type: "button", class: "citation secondary small", text: `[${n}]`,
      "aria-expanded": "false", "aria-label": `Source ${n}: ${sourceLabel(source)}`,
      title: sourceLabel(source),
      onclick: (event) => togglePassage(passage, event.currentTarget, source, n),
    });
  });
  const box = element("div", { class: "sources" },
    element("span", { class: "hint", text: "Sources:" }), ...buttons, passage);
  bubble.querySelector(".actions").before(box);
}

function togglePassage(passage, button, source, n) {
  const open = button.getAttribute("aria-expanded") === "true";
  for (const other of passage.parentElement.querySelectorAll(".citation")) {
    other.setAttribute("aria-expanded", "false");
  }
  if (open) {
    passage.hidden = true;
    return;
  }
  button.setAttribute("aria-expanded", "true");
  const score = typeof source.score === "number" ? ` · relevance ${source.score.toFixed(2)}` : "";
  passage.replaceChildren(
    element("p", { class: "passage-source", text: `[${n}] ${sourceLabel(source)}${score}` }),
    element("blockquote", { text: source.text || "" }),
  );
  passage.hidden = false;
}

// ---------------------------------------------------------------- conversation header,
// model picker, settings and welcome

async function loadModels() {
  try {
    state.models = listOf(await api("GET", "/v1/models")).map((model) => model.id);
  } catch {
    state.models = [];
  }
  showConversation();
}

function showConversationTitle() {
  ui.chatTitle.textContent = state.conversation ? conversationLabel(state.conversation) : "New chat";
}

function showConversation() {
  const conversation = state.conversation || {};
  showConversationTitle();
  const chosen = conversation.model || "";
  const names = new Set(state.models);
  if (chosen) names.add(chosen);
  ui.modelSelect.replaceChildren(
    element("option", { value: "", text: `Default model${state.defaultModel ? ` (${state.defaultModel})` : ""}` }),
    ...[...names].map((name) => element("option", { value: name, text: name })),
  );
  ui.modelSelect.value = chosen;
  ui.settingSystem.value = conversation.system_prompt ?? "";
  ui.settingTemperature.value = conversation.temperature ?? "";
  ui.settingMaxTokens.value = conversation.max_tokens ?? "";
  const model = conversation.model || state.defaultModel || "the server's model";
  ui.welcomeModel.textContent = `Model: ${model}.`;
  ui.welcome.hidden = ui.messages.children.length > 0 || state.reply !== null;
  refreshActions();
}

function showSuggestions() {
  ui.suggestions.replaceChildren(...SUGGESTIONS.map((text) => element("li", {},
    element("button", {
      type: "button", class: "secondary suggestion", text,
      onclick: () => {
        ui.input.value = text;
        submitMessage();
      },
    }))));
}

// Saves settings of the open conversation; with none open yet, creates it with them.
async function saveSettings(changes) {
  try {
    let conversation;
    if (state.conversationId) {
      conversation = await api("PATCH", `/api/conversations/${encodeURIComponent(state.conversationId)}`,
        { json: changes });
    } else {
      conversation = await api("POST", "/api/conversations", { json: changes });
      setConversation(conversation.id);
    }
    state.conversation = conversation;
    announce("Settings saved.");
    await loadConversations().catch(() => {});
  } catch (error) {
    showAlert(describe(error));
  }
  showConversation();
}

function settingsFromForm() {
  const number = (input, parse) => (input.value.trim() === "" ? null : parse(input.value));
  return {
    system_prompt: ui.settingSystem.value.trim() ? ui.settingSystem.value : null,
    temperature: number(ui.settingTemperature, Number),
    max_tokens: number(ui.settingMaxTokens, (value) => Number.parseInt(value, 10)),
  };
}

function toggleSettings() {
  const open = ui.settingsPanel.hidden;
  ui.settingsPanel.hidden = !open;
  ui.settingsButton.setAttribute("aria-expanded", String(open));
  if (open) ui.settingSystem.focus();
}

// ---------------------------------------------------------------- images

// Image jobs are announced in the reply's text ("/api/images/<id>.png"); the page follows
// each job's status until it is final, and the server also pushes an "image" event then.
const IMAGE_LINK = /\/api\/images\/([A-Za-z0-9_-]+)\.png/g;
const PLACEHOLDER_REASONS = {
  unavailable: "the image server is unavailable",
  timed_out: "the image server did not answer in time",
  out_of_memory: "the image server ran out of GPU memory",
  rejected: "the image server rejected the request",
  invalid_response: "the image server sent an invalid response",
  server_error: "the image server failed",
  circuit_open: "the image server is failing, so mami is not trying for now",
};

function reasonText(code) {
  if (!code) return "no reason given";
  return PLACEHOLDER_REASONS[code] || code.replaceAll("_", " ");
}

function followImages(bubble) {
  const text = replyText(bubble);
  let after = bubble;
  for (const [, jobId] of text.matchAll(IMAGE_LINK)) {
    const card = imageCard(jobId, after);
    after = card.item;
    if (!card.final && !card.polling) pollImage(card);
  }
}

function imageCard(jobId, after = null) {
  let card = state.images.get(jobId);
  if (card) return card;
  const caption = element("figcaption", { text: "Image queued…" });
  const progress = element("progress", { max: "100", "aria-label": "Image progress" });
  const figure = element("figure", {}, progress, caption);
  const item = element(
    "li", { class: "message image-card", "data-job": jobId },
    element("span", { class: "who", text: "mami · image" }), figure,
  );
  if (after) after.after(item);
  else ui.messages.append(item);
  scrollToEnd(true);
  card = { jobId, item, figure, caption, progress, final: false, polling: false };
  state.images.set(jobId, card);
  return card;
}

function showImage(event) {
  if (!event.job_id) return;
  const card = imageCard(event.job_id);
  if (card.final) return;
  updateCard(card, event);
  if (!card.final && !card.polling) pollImage(card);
}

function updateCard(card, job) {
  card.item.dataset.state = job.state || "queued";
  if (!FINAL_IMAGE_STATES.has(job.state)) {
    const percent = Math.round(100 * Math.min(1, Math.max(0, Number(job.progress) || 0)));
    if (job.state === "running") {
      card.progress.value = percent;
      card.caption.textContent = `Drawing the image… ${percent}%`;
    } else {
      card.caption.textContent = "Image queued…";
    }
    return;
  }
  card.final = true;
  card.progress.remove();
  if (job.state === "failed") {
    card.item.classList.add("error");
    card.caption.textContent = `The image could not be made${job.error ? `: ${job.error}` : "."}`;
    return;
  }
  const placeholder = job.state === "placeholder";
  const reason = reasonText(job.placeholder_reason);
  card.item.classList.toggle("placeholder", placeholder);
  card.caption.textContent = placeholder
    ? `No image: ${reason}. The picture only says why.`
    : "Image ready.";
  fetchBlob(`/api/images/${encodeURIComponent(card.jobId)}.png`).then((blob) => {
    const img = element("img", {
      src: URL.createObjectURL(blob),
      alt: placeholder ? `Placeholder: ${reason}` : "Generated image",
    });
    card.figure.prepend(img);
    scrollToEnd();
  }).catch((error) => {
    card.caption.textContent += ` (${describe(error)})`;
  });
}

async function pollImage(card) {
  card.polling = true;
  while (!card.final && state.images.get(card.jobId) === card && signedIn()) {
    try {
      const job = await api("GET", `/api/images/${encodeURIComponent(card.jobId)}`);
      if (job && !card.final) updateCard(card, job);
    } catch (error) {
      if (error.status === 404 || error.status === 401) {
        card.caption.textContent = describe(error);
        break;
      }
    }
    if (!card.final) await new Promise((resolve) => setTimeout(resolve, IMAGE_POLL_MS));
  }
  card.polling = false;
}

// ---------------------------------------------------------------- memories and documents

async function loadMemories() {
  let list;
  try {
    list = listOf(await api("GET", "/api/memories"));
  } catch (error) {
    ui.memories.replaceChildren(element("li", { class: "empty", text: describe(error) }));
    return;
  }
  ui.memories.replaceChildren();
  if (!list.length) ui.memories.append(element("li", { class: "empty", text: "No memories." }));
  for (const memory of list) {
    ui.memories.append(element(
      "li", { class: "item", "data-memory": memory.id },
      element("span", { class: "grow", text: memory.text }),
      element("button", {
        type: "button", class: "secondary", text: "Delete",
        "aria-label": `Delete memory: ${memory.text}`,
        onclick: () => removeItem(`/api/memories/${encodeURIComponent(memory.id)}`, loadMemories,
          "Memory deleted."),
      }),
    ));
  }
}

async function loadDocuments() {
  let list;
  try {
    list = listOf(await api("GET", "/api/documents"));
  } catch (error) {
    ui.documents.replaceChildren(element("li", { class: "empty", text: describe(error) }));
    return;
  }
  ui.documents.replaceChildren();
  if (!list.length) ui.documents.append(element("li", { class: "empty", text: "No documents." }));
  for (const doc of list) {
    const chunks = doc.chunks === undefined ? "" : ` (${parts(doc.chunks)})`;
    ui.documents.append(element(
      "li", { class: "item", "data-document": doc.id },
      element("span", { class: "grow", text: `${doc.source}${chunks}` }),
      element("button", {
        type: "button", class: "secondary", text: "Delete",
        "aria-label": `Delete document: ${doc.source}`,
        onclick: () => removeItem(`/api/documents/${encodeURIComponent(doc.id)}`, loadDocuments,
          "Document deleted."),
      }),
    ));
  }
}

function parts(count) {
  return count === 1 ? "1 part" : `${count} parts`;
}

async function removeItem(path, reload, done) {
  try {
    await api("DELETE", path);
    announce(done);
  } catch (error) {
    showAlert(describe(error));
  }
  await reload();
  ui.input.focus();
}

// A POST with the upload's progress shown (fetch cannot report it). Errors as api().
function upload(path, form, name) {
  const bar = ui.uploadProgress;
  bar.hidden = false;
  bar.removeAttribute("value");
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    for (const [key, value] of Object.entries(authHeaders())) request.setRequestHeader(key, value);
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.round((100 * event.loaded) / event.total);
      bar.value = percent;
      setStatus(ui.status.dataset.state, percent < 100
        ? `Uploading ${name}… ${percent}%` : `Reading ${name}…`);
    });
    request.addEventListener("load", () => {
      let data = null;
      try {
        data = request.responseText ? JSON.parse(request.responseText) : null;
      } catch {
        data = null;
      }
      if (request.status >= 200 && request.status < 300) return resolve(data);
      const message = (data && data.error && data.error.message) || request.statusText || "error";
      const error = new ApiError(request.status, message);
      if (request.status === 401) {
        signOut(state.token ? `${describe(error)}. Sign in again with a valid token.` : "");
      }
      reject(error);
    });
    request.addEventListener("error", () => reject(new ApiError(0, "the server cannot be reached")));
    request.send(form);
  }).finally(() => {
    bar.hidden = true;
  });
}

async function uploadDocument() {
  const file = ui.uploadFile.files[0];
  if (!file) return showAlert("Choose a file to upload first.");
  const form = new FormData();
  form.append("file", file, file.name);
  setStatus(ui.status.dataset.state, `Uploading ${file.name}…`);
  try {
    const [doc] = listOf(await upload("/api/documents", form, file.name));
    const done = `Uploaded ${file.name}${doc ? ` (${parts(doc.chunks)})` : ""}.`;
    announce(done);
    hideAlert();
    ui.uploadForm.reset();
    setStatus(socketOpen() ? "online" : "offline", done);
  } catch (error) {
    showAlert(`Upload failed: ${describe(error)}`);
    setStatus(socketOpen() ? "online" : "offline", socketOpen() ? "Connected" : "Disconnected");
  }
  await loadDocuments();
}

// ---------------------------------------------------------------- draft, menu, keys

function saveDraft() {
  if (ui.input.value) localStorage.setItem(DRAFT_KEY, ui.input.value);
  else localStorage.removeItem(DRAFT_KEY);
}

function closeMenu() {
  ui.sidebar.classList.remove("open");
  ui.menu.setAttribute("aria-expanded", "false");
}

function toggleMenu() {
  const open = ui.sidebar.classList.toggle("open");
  ui.menu.setAttribute("aria-expanded", String(open));
  if (open) ui.newChat.focus();
}

function wire() {
  ui.signinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    ui.tokenInput.value = "";
    if (token) signIn(token);
  });
  ui.signOut.addEventListener("click", () => signOut());
  ui.alertClose.addEventListener("click", hideAlert);
  ui.menu.addEventListener("click", toggleMenu);
  ui.newChat.addEventListener("click", newChat);
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitMessage();
  });
  ui.stop.addEventListener("click", stopReply);
  ui.input.addEventListener("input", saveDraft);
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submitMessage();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (state.reply) stopReply();
    else if (!ui.settingsPanel.hidden) {
      toggleSettings();
      ui.settingsButton.focus();
    }
    else if (ui.sidebar.classList.contains("open")) {
      closeMenu();
      ui.menu.focus();
    }
  });
  ui.memoriesPanel.addEventListener("toggle", () => {
    if (ui.memoriesPanel.open) loadMemories();
  });
  ui.documentsPanel.addEventListener("toggle", () => {
    if (ui.documentsPanel.open) loadDocuments();
  });
  ui.uploadForm.addEventListener("submit", (event) => {
    event.preventDefault();
    uploadDocument();
  });
  ui.search.addEventListener("input", searchConversations);
  ui.modelSelect.addEventListener("change", () => saveSettings({ model: ui.modelSelect.value || null }));
  ui.settingsButton.addEventListener("click", toggleSettings);
  ui.settingsPanel.addEventListener("submit", (event) => {
    event.preventDefault();
    saveSettings(settingsFromForm());
  });
  ui.settingsReset.addEventListener("click", () => {
    saveSettings({ system_prompt: null, temperature: null, max_tokens: null });
  });
  setInterval(() => send({ type: "ping" }), PING_EVERY_MS);
  window.addEventListener("online", () => {
    if (!state.socket) connect();
  });
}

async function main() {
  wire();
  showSuggestions();
  await takeTokenFromAddress();
  ui.input.value = localStorage.getItem(DRAFT_KEY) || "";
  updateButtons();
  // Without a stored token, try without one: a server with [core] auth = false answers;
  // otherwise the 401 shows the sign-in form.
  setStatus("offline", "Not signed in");
  signIn(localStorage.getItem(TOKEN_KEY) || "");
}

main();
