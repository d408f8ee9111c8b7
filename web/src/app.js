// The chat page of martlet_molt. It speaks only the public HTTP API:
//
//   POST /chat/stream        starts a run; the page reads X-Run-Id / X-Session-Id and hangs up
//   GET  /runs/{id}/stream   read through EventSource (?format=json), which resumes by itself
//                            with Last-Event-ID; the page also drops any event whose seq it has
//                            already shown, so a replay never shows text twice
//   GET  /sessions/{id}      the history, and the active run to attach to (?after=0 shows the
//                            text so far)
//   GET  /sessions[?q=]      the chats by their titles (saved on the server, so every browser
//                            shows the same), or those holding the search box's words
//   PATCH /sessions/{id}     rename; GET /sessions/{id}/export downloads a chat as a file
//   POST /runs/{id}/cancel, DELETE /sessions
//
// Markdown goes marked -> DOMPurify.sanitize -> innerHTML; everything else uses textContent.

import DOMPurify from 'dompurify';
import { Marked } from 'marked';

const KEY_STORAGE = 'martlet.apiKey';
// Titles were once kept in this browser only; they live on the server now.
const OLD_TITLE_STORAGE = 'martlet.titles';
const SEARCH_DELAY_MS = 250;
const FINAL = new Set(['completed', 'failed', 'cancelled', 'interrupted']);
const RETRY_DELAYS_MS = [250, 500, 1000, 2000, 4000];
const POST_RETRIES = 3;
// A balancer's or a stopping gateway's answers: the same request may succeed elsewhere.
const RETRYABLE_STATUSES = new Set([502, 503, 504]);
const LONG_REPLY_CHARS = 30000;

const markdown = new Marked({ gfm: true, breaks: false, async: false });

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});

/** Safe HTML for a reply's markdown. */
function renderMarkdown(element, text) {
  const html = markdown.parse(text);
  element.innerHTML = DOMPurify.sanitize(html, {
    USE_PROFILES: { html: true },
    ADD_ATTR: ['target'],
    FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select'],
    FORBID_ATTR: ['style'],
  });
}

// ---------------------------------------------------------------- elements and state

const $ = (id) => document.getElementById(id);
const els = {
  conversation: $('conversation'),
  empty: $('empty'),
  status: $('status'),
  composer: $('composer'),
  message: $('message'),
  send: $('send'),
  stop: $('stop'),
  sessionList: $('session-list'),
  sessionEmpty: $('session-empty'),
  newChat: $('new-chat'),
  sidebar: $('sidebar'),
  sessionsToggle: $('sessions-toggle'),
  keyPanel: $('key-panel'),
  keyForm: $('key-form'),
  keyInput: $('api-key'),
  keyForget: $('key-forget'),
  model: $('model'),
  searchForm: $('search-form'),
  search: $('session-search'),
  searchSummary: $('search-summary'),
  chatHead: $('chat-head'),
  chatTitle: $('chat-title'),
  chatActions: $('chat-actions'),
  rename: $('rename'),
  renameForm: $('rename-form'),
  renameInput: $('rename-input'),
  renameCancel: $('rename-cancel'),
  downloadMenu: $('download-menu'),
};

const state = {
  apiKey: readStorage(KEY_STORAGE) || '',
  sessionId: null,
  /** The ReplyStream shown in the conversation, if any. */
  reply: null,
  /** A message being started (POST in flight). */
  sending: false,
  /** Bumped on every session switch, so late answers for an old view are dropped. */
  view: 0,
  askedForKey: false,
  /** The open chat's title, as the server has it (null: none yet). */
  title: null,
  /** The search box's words ('' lists every chat). */
  query: '',
};

function readStorage(name) {
  try {
    return window.localStorage.getItem(name);
  } catch {
    return null;
  }
}

function writeStorage(name, value) {
  try {
    if (value === null) window.localStorage.removeItem(name);
    else window.localStorage.setItem(name, value);
  } catch {
    // storage can be off (private mode); the page still works for this visit
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function newRequestId() {
  if (window.crypto && typeof window.crypto.randomUUID === 'function') {
    return window.crypto.randomUUID();
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function setStatus(text, kind = 'info') {
  els.status.textContent = text;
  els.status.dataset.kind = kind;
}

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

async function errorFrom(response) {
  let code = 'http_error';
  let message = `${response.status} ${response.statusText}`.trim();
  let details = {};
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      details = body.error.details || {};
    } else if (body && Array.isArray(body.detail)) {
      message = body.detail.map((d) => d.msg).join('; ');
    } else if (body && typeof body.detail === 'string') {
      message = body.detail;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, details);
}

function authHeaders() {
  return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
}

/** fetch with the key; throws ApiError (status 0 when the gateway cannot be reached). */
async function api(method, path, body, signal) {
  const headers = authHeaders();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', 'cannot reach the gateway', {});
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (error.status === 401) askForKey(error);
    throw error;
  }
  return response;
}

async function apiJson(method, path, body) {
  const response = await api(method, path, body);
  return response.status === 204 ? null : response.json();
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- API key

function askForKey(error) {
  els.keyPanel.open = true;
  const refused = Boolean(state.apiKey);
  setStatus(
    refused
      ? `The API key was refused (${error.message}). Enter a valid key.`
      : 'This gateway needs an API key. Enter it above and save.',
    'error',
  );
  if (!state.askedForKey) {
    state.askedForKey = true;
    els.keyInput.focus();
  }
}

function saveKey(value) {
  state.apiKey = value.trim();
  state.askedForKey = false;
  writeStorage(KEY_STORAGE, state.apiKey || null);
  els.keyInput.value = state.apiKey;
  setStatus(state.apiKey ? 'API key saved in this browser.' : 'API key forgotten.');
  els.keyPanel.open = false;
  void refreshSessions();
  void openSession(state.sessionId, { force: true });
}

// ---------------------------------------------------------------- titles

/** Show the open chat's title (the server's), in the heading and the tab. */
function showTitle(title) {
  state.title = title || null;
  const shown = state.title || state.sessionId || '';
  els.chatTitle.textContent = shown;
  els.chatHead.hidden = !state.sessionId;
  document.title = state.sessionId ? `${shown} · martlet_molt` : 'martlet_molt';
}

function startRename() {
  if (!state.sessionId) return;
  els.renameInput.value = state.title || '';
  els.renameForm.hidden = false;
  els.chatTitle.hidden = true;
  els.chatActions.hidden = true;
  els.renameInput.focus();
  els.renameInput.select();
}

function endRename() {
  els.renameForm.hidden = true;
  els.chatTitle.hidden = false;
  els.chatActions.hidden = false;
}

async function saveRename() {
  const sessionId = state.sessionId;
  const title = els.renameInput.value.trim();
  if (!sessionId) return;
  if (!title) {
    setStatus('A title cannot be blank.', 'error');
    els.renameInput.focus();
    return;
  }
  try {
    const session = await apiJson('PATCH', `sessions/${enc(sessionId)}`, { title });
    if (sessionId !== state.sessionId) return;
    showTitle(session.title);
    endRename();
    setStatus('Chat renamed.');
    els.rename.focus();
    void refreshSessions();
  } catch (err) {
    if (err.status !== 401) setStatus(`Could not rename the chat: ${err.message}`, 'error');
    els.renameInput.focus();
  }
}

// ---------------------------------------------------------------- download

/** The file name a `Content-Disposition: attachment` answer gives, UTF-8 form preferred. */
function attachmentName(response, fallback) {
  const disposition = response.headers.get('Content-Disposition') || '';
  const encoded = /filename\*=UTF-8''([^;\s]+)/i.exec(disposition);
  if (encoded) {
    try {
      return decodeURIComponent(encoded[1]);
    } catch {
      // fall through to the plain name
    }
  }
  const plain = /filename="([^"]*)"/.exec(disposition);
  return plain ? plain[1] : fallback;
}

/** Fetch the chat's export (with the API key, which a plain link could not send) and hand it
 * to the browser as a download. */
async function download(format) {
  const sessionId = state.sessionId;
  els.downloadMenu.open = false;
  if (!sessionId) return;
  let response;
  let blob;
  try {
    response = await api('GET', `sessions/${enc(sessionId)}/export?format=${enc(format)}`);
    blob = await response.blob();
  } catch (err) {
    if (err.status !== 401) setStatus(`Could not download the chat: ${err.message}`, 'error');
    return;
  }
  const name = attachmentName(response, `${sessionId}.${format === 'json' ? 'json' : 'md'}`);
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  setStatus(`Downloaded ${name}.`);
}

// ---------------------------------------------------------------- messages

function clearConversation() {
  els.conversation.replaceChildren(els.empty);
  els.empty.hidden = false;
}

function nearBottom() {
  const c = els.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

function scrollToBottom() {
  els.conversation.scrollTop = els.conversation.scrollHeight;
}

function addArticle(role, label) {
  els.empty.hidden = true;
  const stick = nearBottom();
  const article = document.createElement('article');
  article.className = `msg ${role}`;
  const heading = document.createElement('h3');
  heading.className = 'msg-role';
  heading.textContent = label;
  const body = document.createElement('div');
  body.className = 'msg-body';
  article.append(heading, body);
  els.conversation.append(article);
  if (stick) scrollToBottom();
  return article;
}

function addUserMessage(text) {
  const article = addArticle('user', 'You');
  const p = document.createElement('p');
  p.className = 'plain';
  p.textContent = text;
  article.querySelector('.msg-body').append(p);
  return article;
}

function shorten(text, limit = 200) {
  const one = String(text ?? '').replace(/\s+/g, ' ').trim();
  return one.length > limit ? `${one.slice(0, limit)}…` : one;
}

// ---------------------------------------------------------------- tool calls
//
// Each call is a <details class="tool" data-call-id data-state="running|done|failed|unfinished">
// whose summary reads "🔧 name(short args) state duration"; opened, it shows the full
// arguments and result. Calls of one round may finish in any order, and some providers reuse
// ids across rounds, so a result goes to the first block with its id that is still running.

function parseArguments(args) {
  try {
    return JSON.parse(args);
  } catch {
    return undefined;
  }
}

/** The summary's form of the arguments: a lone value as is (`6*7` for
 * {"expression": "6*7"}), else `key=value` pairs; anything not a JSON object verbatim. */
function shortArguments(args) {
  const parsed = parseArguments(args);
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) return shorten(args, 80);
  const show = (value) => (typeof value === 'string' ? value : JSON.stringify(value));
  const entries = Object.entries(parsed);
  if (entries.length === 1) return shorten(show(entries[0][1]), 80);
  return shorten(entries.map(([key, value]) => `${key}=${show(value)}`).join(', '), 80);
}

function fullArguments(args) {
  const parsed = parseArguments(args);
  return parsed === undefined ? String(args ?? '') : JSON.stringify(parsed, null, 2);
}

/** "0.4 s", or "12 ms" under a tenth of a second; '' when unknown (older events). */
function formatDuration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return '';
  return ms < 100 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Results carry `status` ("done" | "failed"); older ones do not, and a tool's failure is
 * then its "error: ..." text. A saved message's run status ("completed") says nothing. */
function toolFailed(status, content) {
  if (status === 'failed') return true;
  if (status === 'done') return false;
  return String(content ?? '').startsWith('error:');
}

const TOOL_STATE_TEXT = {
  running: 'running…',
  done: 'done',
  failed: 'failed',
  unfinished: 'no result',
};

function part(tag, className, text) {
  const element = document.createElement(tag);
  element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function toolBlock(id, name, args) {
  const block = part('details', 'tool');
  if (id) block.dataset.callId = id;
  const summary = document.createElement('summary');
  const icon = part('span', 'tool-icon', '🔧');
  icon.setAttribute('aria-hidden', 'true');
  summary.append(
    icon,
    part('span', 'tool-name', name || 'tool'),
    part('span', 'tool-args', args === undefined ? '' : `(${shortArguments(args)})`),
    part('span', 'tool-state'),
    part('span', 'tool-time'),
  );
  const detail = part('div', 'tool-detail');
  if (args !== undefined) {
    detail.append(part('p', 'tool-label', 'Arguments'), part('pre', 'tool-arguments', fullArguments(args)));
  }
  detail.append(part('p', 'tool-label', 'Result'), part('pre', 'tool-result'));
  block.append(summary, detail);
  setToolState(block, 'running');
  return block;
}

function setToolState(block, toolState) {
  block.dataset.state = toolState;
  block.querySelector('.tool-state').textContent = TOOL_STATE_TEXT[toolState] ?? toolState;
}

/** The first block of this call id in `container` still waiting for its result, if any. */
function runningTool(container, id) {
  const blocks = container.querySelectorAll('details.tool[data-state="running"]');
  return [...blocks].find((block) => block.dataset.callId === id) || null;
}

/** Put a result into its call's block; a result whose call is not shown gets a block. */
function showToolResult(container, { id, name, content, status, durationMs }) {
  let block = id ? runningTool(container, id) : null;
  const added = !block;
  if (added) block = toolBlock(id, name);
  block.querySelector('.tool-result').textContent = String(content ?? '');
  block.querySelector('.tool-time').textContent = formatDuration(durationMs);
  setToolState(block, toolFailed(status, content) ? 'failed' : 'done');
  return added ? block : null;
}

/** Calls that will get no result (the run ended, or the history lacks it). */
function settleTools(container) {
  for (const block of container.querySelectorAll('details.tool[data-state="running"]')) {
    setToolState(block, 'unfinished');
  }
}

const STATE_TEXT = {
  connecting: 'Connecting…',
  streaming: 'Streaming…',
  reconnecting: 'Connection lost, reconnecting…',
  unauthorized: 'Paused: the gateway needs a valid API key (see above).',
  completed: '',
  failed: 'Failed',
  cancelled: 'Stopped: the reply was cancelled; the part written so far is kept.',
  interrupted: 'Interrupted: the server stopped before the reply finished.',
};

// A completed reply the model did not end itself: it reached its token limit.
const LENGTH = 'length';

function stateLine(status, rawReason) {
  const reason = rawReason && rawReason !== status ? rawReason : null;
  if (status === 'failed') return reason ? `Failed: ${reason}` : 'Failed';
  if (status === 'interrupted' && reason) return `Interrupted: ${reason}`;
  if (status === 'completed' && reason === LENGTH) return 'Cut at the length limit.';
  return STATE_TEXT[status] ?? status;
}

function setArticleState(article, status, reason) {
  article.dataset.state = status;
  let line = article.querySelector('.msg-state');
  const text = stateLine(status, reason);
  if (!text) {
    if (line) line.remove();
    return;
  }
  if (!line) {
    line = document.createElement('p');
    line.className = 'msg-state';
    article.append(line);
  }
  line.textContent = text;
}

function addSavedMessage(message) {
  if (message.role === 'user') {
    addUserMessage(message.content);
    return;
  }
  const last = els.conversation.lastElementChild;
  const lastAssistant = last && last.classList.contains('assistant') ? last : null;
  if (message.role === 'tool') {
    const target = lastAssistant || addArticle('assistant', 'Assistant');
    const body = target.querySelector('.msg-body');
    const added = showToolResult(body, {
      id: message.tool_call_id,
      name: message.name,
      content: message.content,
      status: message.tool_status,
      durationMs: message.duration_ms,
    });
    if (added) body.append(added);
    return;
  }
  // A run's tool rounds and its reply are saved as several messages: shown as one reply, as
  // they were while it streamed.
  const sameRun = lastAssistant && message.run_id && lastAssistant.dataset.runId === message.run_id;
  const article = sameRun ? lastAssistant : addArticle('assistant', 'Assistant');
  if (message.run_id) article.dataset.runId = message.run_id;
  const body = article.querySelector('.msg-body');
  if (message.content) {
    const md = document.createElement('div');
    md.className = 'md';
    renderMarkdown(md, message.content);
    body.append(md);
  }
  for (const call of message.tool_calls || []) {
    const fn = call.function || call;
    body.append(toolBlock(call.id, fn.name, fn.arguments));
  }
  setArticleState(article, message.status || 'completed');
  if ((message.status === 'failed' || message.status === 'interrupted') && message.run_id) {
    void fillReason(article, message.run_id, message.status);
  }
}

async function fillReason(article, runId, status) {
  try {
    const run = await apiJson('GET', `runs/${enc(runId)}`);
    if (run && run.error) setArticleState(article, status, run.error);
  } catch {
    // the reason is a nicety; the state is already shown
  }
}

// ---------------------------------------------------------------- a live reply

/**
 * One run's reply, read from GET /runs/{id}/stream. Events carry `id: <seq>`; an event whose
 * seq is not above the last one shown is a replay and is dropped, so resuming (by the
 * browser's own Last-Event-ID, or by us with ?after=) never shows text twice or skips any.
 */
class ReplyStream {
  constructor(runId, sessionId, article) {
    this.runId = runId;
    this.sessionId = sessionId;
    this.article = article;
    this.body = article.querySelector('.msg-body');
    this.lastSeq = 0;
    this.textPart = null;
    this.text = '';
    this.status = 'connecting';
    this.reason = null;
    this.source = null;
    this.retries = 0;
    this.retryTimer = null;
    this.renderPending = false;
    this.detached = false;
    article.dataset.runId = runId;
    article.setAttribute('aria-busy', 'true');
    this.setState('connecting');
  }

  get final() {
    return FINAL.has(this.status);
  }

  open() {
    if (this.detached || this.final) return;
    const params = new URLSearchParams({ format: 'json', after: String(this.lastSeq) });
    if (state.apiKey) params.set('api_key', state.apiKey);
    const source = new EventSource(`runs/${enc(this.runId)}/stream?${params}`);
    this.source = source;
    source.onopen = () => {
      this.retries = 0;
      if (!this.final) this.setState('streaming');
    };
    source.addEventListener('delta', (e) => this.handle(e, (d) => this.addText(d.text)));
    source.addEventListener('tool_call', (e) =>
      this.handle(e, (d) => this.addNote(toolBlock(d.id, d.name, d.arguments))),
    );
    source.addEventListener('tool_result', (e) => this.handle(e, (d) => this.addResult(d)));
    source.addEventListener('done', (e) =>
      this.handle(e, (d) => {
        const cut = d.finish_reason === LENGTH ? LENGTH : null;
        this.finish(d.status, d.error || cut);
      }),
    );
    // `error` is both the server's `event: error` (a MessageEvent with data) and the
    // EventSource's own connection error (a plain Event).
    source.addEventListener('error', (e) => {
      if (e instanceof MessageEvent && e.data) {
        this.handle(e, (d) => {
          this.reason = d.message;
        });
      } else {
        this.connectionError(source);
      }
    });
  }

  handle(event, apply) {
    if (this.detached || event.target !== this.source) return;
    const seq = Number(event.lastEventId);
    if (!Number.isSafeInteger(seq) || seq <= this.lastSeq) return;
    this.lastSeq = seq;
    if (this.status !== 'streaming' && !this.final) this.setState('streaming');
    let data = {};
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    apply(data);
  }

  addText(text) {
    if (!text) return;
    if (!this.textPart) {
      this.textPart = { element: document.createElement('div'), text: '' };
      this.textPart.element.className = 'md';
      this.body.append(this.textPart.element);
    }
    this.textPart.text += text;
    this.text += text;
    this.scheduleRender();
  }

  addNote(note) {
    this.flush();
    this.textPart = null;
    this.body.append(note);
  }

  addResult(data) {
    const added = showToolResult(this.body, {
      id: data.tool_call_id,
      name: data.name,
      content: data.content,
      status: data.status,
      durationMs: data.duration_ms,
    });
    if (added) this.addNote(added);
  }

  scheduleRender() {
    if (this.renderPending) return;
    this.renderPending = true;
    const run = () => this.flush();
    // Each render parses the whole reply: once a frame while it is short, less often after.
    if (this.text.length < LONG_REPLY_CHARS) window.requestAnimationFrame(run);
    // requestAnimationFrame does not fire in a hidden tab; the timer covers that case too.
    setTimeout(run, this.text.length < LONG_REPLY_CHARS ? 120 : 400);
  }

  flush() {
    if (!this.renderPending) return;
    this.renderPending = false;
    if (!this.textPart) return;
    const stick = nearBottom();
    renderMarkdown(this.textPart.element, this.textPart.text);
    this.article.dataset.seq = String(this.lastSeq);
    if (stick) scrollToBottom();
  }

  setState(status, reason) {
    this.status = status;
    if (reason !== undefined) this.reason = reason;
    setArticleState(this.article, status, this.reason);
    if (state.reply === this) updateComposer();
  }

  connectionError(source) {
    if (this.detached || this.final || source !== this.source) return;
    this.setState('reconnecting');
    if (source.readyState === EventSource.CONNECTING) return; // the browser retries itself
    // The browser gave up (an HTTP error answer): find out why, then retry ourselves.
    source.close();
    this.source = null;
    this.scheduleRetry();
  }

  scheduleRetry() {
    const delay = RETRY_DELAYS_MS[Math.min(this.retries, RETRY_DELAYS_MS.length - 1)];
    this.retries += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.retry(), delay);
  }

  async retry() {
    if (this.detached || this.final) return;
    try {
      await api('GET', `runs/${enc(this.runId)}`);
    } catch (err) {
      if (this.detached || this.final) return;
      if (err.status === 0 || err.status >= 500) {
        this.scheduleRetry();
      } else if (err.status === 401) {
        // Saving a key reopens the chat, which attaches again.
        this.setState('unauthorized');
      } else {
        this.flush();
        this.finish('failed', err.message);
      }
      return;
    }
    this.open();
  }

  finish(status, error) {
    this.flush();
    settleTools(this.body);
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.article.removeAttribute('aria-busy');
    this.article.dataset.seq = String(this.lastSeq);
    this.setState(status, error || this.reason || undefined);
    if (state.reply === this) {
      if (status === 'completed') setStatus('');
      else setStatus(stateLine(status, this.reason), status === 'cancelled' ? 'info' : 'error');
      void refreshSessions();
    }
  }

  /** Stop reading (switching sessions); the run goes on in the server. */
  detach() {
    this.detached = true;
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
  }
}

function attach(runId, sessionId, article) {
  const reply = new ReplyStream(runId, sessionId, article || addArticle('assistant', 'Assistant'));
  state.reply = reply;
  updateComposer();
  reply.open();
  return reply;
}

// ---------------------------------------------------------------- sessions

function sessionFromHash() {
  const match = /^#session=([A-Za-z0-9][A-Za-z0-9_.-]{0,127})$/.exec(window.location.hash);
  return match ? match[1] : null;
}

async function openSession(sessionId, { force = false } = {}) {
  if (!force && sessionId === state.sessionId && state.view > 0) return;
  const view = ++state.view;
  if (state.reply) state.reply.detach();
  state.reply = null;
  state.sessionId = sessionId;
  clearConversation();
  markCurrentSession();
  updateComposer();
  endRename();
  showTitle(listedTitle(sessionId));
  if (!sessionId) return;
  let detail;
  try {
    detail = await apiJson('GET', `sessions/${enc(sessionId)}`);
  } catch (err) {
    if (view !== state.view) return;
    if (err.status === 404) setStatus('This chat does not exist (it may have been deleted).', 'error');
    else if (err.status !== 401) setStatus(`Could not load the chat: ${err.message}`, 'error');
    return;
  }
  if (view !== state.view) return;
  const active = detail.active_run_id;
  // Between a run's save and its end the session can list both the saved reply and the
  // active run: show that run only once, from its stream.
  for (const message of detail.messages) {
    if (active && message.role !== 'user' && message.run_id === active) continue;
    addSavedMessage(message);
  }
  settleTools(els.conversation);
  showTitle(detail.title);
  if (active) attach(active, sessionId);
  scrollToBottom();
  updateComposer();
}

function showSession(sessionId) {
  const hash = sessionId ? `#session=${sessionId}` : '';
  if (window.location.hash !== hash) {
    if (hash) window.location.hash = hash;
    else window.history.pushState(null, '', window.location.pathname + window.location.search);
  }
  void openSession(sessionId);
  closeSidebar();
}

function markCurrentSession() {
  for (const button of els.sessionList.querySelectorAll('.session-open')) {
    if (button.dataset.sessionId === state.sessionId) button.setAttribute('aria-current', 'page');
    else button.removeAttribute('aria-current');
  }
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

let listTicket = 0;
/** The titles of the chats last listed, by id (what the list shows, before a chat opens). */
const listedTitles = new Map();

function listedTitle(sessionId) {
  return (sessionId && listedTitles.get(sessionId)) || null;
}

/** List the chats, or those holding the search box's words; a late answer to an older
 * request is dropped. */
async function refreshSessions() {
  const ticket = ++listTicket;
  const query = state.query;
  const path = query ? `sessions?limit=50&q=${enc(query)}` : 'sessions?limit=100';
  try {
    const page = await apiJson('GET', path);
    if (ticket === listTicket) renderSessions(page, query);
  } catch (err) {
    if (ticket === listTicket && err.status !== 401) {
      setStatus(`Could not list the chats: ${err.message}`, 'error');
    }
  }
}

/** The passage's text with its matched words in <mark> (offsets count code points). */
function highlightedSnippet(snippet, highlights) {
  const fragment = document.createDocumentFragment();
  const chars = Array.from(snippet || '');
  let at = 0;
  for (const [start, end] of highlights || []) {
    if (start < at || end <= start) continue;
    fragment.append(chars.slice(at, start).join(''));
    const mark = document.createElement('mark');
    mark.textContent = chars.slice(start, end).join('');
    fragment.append(mark);
    at = end;
  }
  fragment.append(chars.slice(at).join(''));
  return fragment;
}

function renderSessions(page, query) {
  const sessions = page.sessions;
  const items = sessions.map((session) => {
    const name = session.title || session.session_id;
    listedTitles.set(session.session_id, session.title);
    if (session.session_id === state.sessionId && session.title !== state.title) {
      showTitle(session.title);
    }
    const li = document.createElement('li');
    li.className = 'session';
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'session-open';
    open.dataset.sessionId = session.session_id;
    const title = document.createElement('span');
    title.className = 'session-title';
    title.textContent = name;
    const meta = document.createElement('span');
    if (query && session.snippet && session.matched === 'message') {
      meta.className = 'session-snippet';
      meta.append(highlightedSnippet(session.snippet, session.highlights));
    } else if (query && session.matched === 'title') {
      title.replaceChildren(highlightedSnippet(session.snippet, session.highlights));
      meta.className = 'session-meta';
      meta.textContent = formatTime(session.updated_at || session.created_at);
    } else {
      meta.className = 'session-meta';
      meta.textContent = session.active_run_id
        ? 'replying…'
        : formatTime(session.updated_at || session.created_at);
    }
    open.append(title, meta);
    open.addEventListener('click', () => showSession(session.session_id));
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'session-delete';
    remove.textContent = '✕';
    remove.setAttribute('aria-label', `Delete chat ${name}`);
    remove.addEventListener('click', () => void deleteSession(session.session_id, remove, name));
    li.append(open, remove);
    return li;
  });
  els.sessionList.replaceChildren(...items);
  els.sessionEmpty.textContent = query ? 'No chat holds these words.' : 'No chats yet.';
  els.sessionEmpty.hidden = items.length > 0;
  els.searchSummary.textContent = query
    ? `${page.total} ${page.total === 1 ? 'chat' : 'chats'} found`
    : '';
  markCurrentSession();
}

let searchTimer = null;

function searchChanged() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const query = els.search.value.trim();
    if (query === state.query) return;
    state.query = query;
    void refreshSessions();
  }, SEARCH_DELAY_MS);
}

async function deleteSession(sessionId, button, title) {
  // Two clicks: the first arms the button, the second deletes.
  if (button.dataset.armed !== 'true') {
    button.dataset.armed = 'true';
    button.textContent = 'Delete?';
    button.setAttribute('aria-label', `Confirm: delete chat ${title}`);
    setTimeout(() => {
      if (!button.isConnected) return;
      button.dataset.armed = 'false';
      button.textContent = '✕';
      button.setAttribute('aria-label', `Delete chat ${title}`);
    }, 4000);
    return;
  }
  try {
    await api('DELETE', `sessions/${enc(sessionId)}`);
  } catch (err) {
    if (err.status !== 404) {
      setStatus(`Could not delete the chat: ${err.message}`, 'error');
      return;
    }
  }
  listedTitles.delete(sessionId);
  setStatus('Chat deleted.');
  if (sessionId === state.sessionId) showSession(null);
  await refreshSessions();
  els.newChat.focus();
}

// ---------------------------------------------------------------- sending and stopping

function busy() {
  return state.sending || Boolean(state.reply && !state.reply.final);
}

function updateComposer() {
  const streaming = Boolean(state.reply && !state.reply.final);
  els.send.disabled = busy();
  els.stop.hidden = !streaming;
  els.composer.dataset.busy = busy() ? 'true' : 'false';
}

async function send(text) {
  if (busy() || !text.trim()) return;
  const view = state.view;
  const sessionId = state.sessionId;
  state.sending = true;
  updateComposer();
  setStatus('');
  els.message.value = '';
  const userArticle = addUserMessage(text);
  scrollToBottom();
  const body = { message: text, client_request_id: newRequestId() };
  if (sessionId) body.session_id = sessionId;
  const controller = new AbortController();
  let response = null;
  try {
    for (let attempt = 0; ; attempt += 1) {
      try {
        response = await api('POST', 'chat/stream?format=json', body, controller.signal);
        break;
      } catch (err) {
        // Retrying with the same client_request_id attaches to the run a lost answer started.
        const retryable = err.status === 0 || RETRYABLE_STATUSES.has(err.status);
        if (retryable && attempt < POST_RETRIES) {
          setStatus('Cannot reach the gateway, retrying…', 'error');
          await sleep(500 * 2 ** attempt);
          continue;
        }
        throw err;
      }
    }
  } catch (err) {
    state.sending = false;
    if (view === state.view) {
      userArticle.remove();
      if (!els.conversation.querySelector('.msg')) els.empty.hidden = false;
      if (!els.message.value) els.message.value = text;
      if (err.status === 409 && err.details.active_run_id) {
        setStatus('A reply is already being written in this chat; showing it.', 'error');
        void openSession(sessionId, { force: true });
      } else if (err.status !== 401) {
        setStatus(`Could not send: ${err.message}`, 'error');
      }
    }
    updateComposer();
    return;
  }
  const runId = response.headers.get('X-Run-Id');
  const newSessionId = response.headers.get('X-Session-Id') || sessionId;
  // The page reads the run through GET /runs/{id}/stream, which resumes; this body is not needed.
  controller.abort();
  state.sending = false;
  if (view !== state.view) {
    // The user switched chats meanwhile; the run goes on and is saved.
    updateComposer();
    void refreshSessions();
    return;
  }
  if (newSessionId !== state.sessionId) {
    state.sessionId = newSessionId;
    window.history.replaceState(null, '', `#session=${newSessionId}`);
    showTitle(null); // the server titled it from this message: the list brings the title
  }
  if (runId) attach(runId, newSessionId);
  updateComposer();
  void refreshSessions();
}

async function stop() {
  const reply = state.reply;
  if (!reply || reply.final) return;
  els.stop.disabled = true;
  try {
    const run = await apiJson('POST', `runs/${enc(reply.runId)}/cancel`);
    // The stream brings the end; if it is not connected now, show the saved outcome.
    setTimeout(() => {
      if (!reply.final && !reply.detached && run && FINAL.has(run.status) && !reply.source) {
        reply.finish(run.status, run.error);
      }
    }, 3000);
  } catch (err) {
    if (err.status !== 401) setStatus(`Could not stop the reply: ${err.message}`, 'error');
  } finally {
    els.stop.disabled = false;
    els.message.focus();
  }
}

// ---------------------------------------------------------------- the small screen

function closeSidebar() {
  document.body.classList.remove('sidebar-open');
  els.sessionsToggle.setAttribute('aria-expanded', 'false');
}

function toggleSidebar() {
  const open = !document.body.classList.contains('sidebar-open');
  document.body.classList.toggle('sidebar-open', open);
  els.sessionsToggle.setAttribute('aria-expanded', String(open));
  if (open) els.newChat.focus();
}

// ---------------------------------------------------------------- wiring

async function showModel() {
  try {
    const health = await apiJson('GET', 'healthz');
    if (health && health.model) els.model.textContent = health.model;
  } catch {
    // only a label
  }
}

function start() {
  writeStorage(OLD_TITLE_STORAGE, null);
  els.keyInput.value = state.apiKey;
  els.search.addEventListener('input', searchChanged);
  els.searchForm.addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(searchTimer);
    state.query = els.search.value.trim();
    void refreshSessions();
  });
  els.search.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && els.search.value) {
      e.preventDefault();
      e.stopPropagation();
      els.search.value = '';
      searchChanged();
    }
  });
  els.rename.addEventListener('click', startRename);
  els.renameForm.addEventListener('submit', (e) => {
    e.preventDefault();
    void saveRename();
  });
  els.renameCancel.addEventListener('click', () => {
    endRename();
    els.rename.focus();
  });
  els.renameInput.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      endRename();
      els.rename.focus();
    }
  });
  for (const option of els.downloadMenu.querySelectorAll('button[data-format]')) {
    option.addEventListener('click', () => void download(option.dataset.format));
  }
  els.keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    saveKey(els.keyInput.value);
  });
  els.keyForget.addEventListener('click', () => saveKey(''));
  els.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    void send(els.message.value);
  });
  els.message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      void send(els.message.value);
    } else if (e.key === 'Escape' && state.reply && !state.reply.final) {
      e.preventDefault();
      void stop();
    }
  });
  els.stop.addEventListener('click', () => void stop());
  els.newChat.addEventListener('click', () => {
    showSession(null);
    els.message.focus();
  });
  els.sessionsToggle.addEventListener('click', toggleSidebar);
  document.addEventListener('click', (e) => {
    const inside = els.sidebar.contains(e.target) || els.sessionsToggle.contains(e.target);
    if (!inside && document.body.classList.contains('sidebar-open')) closeSidebar();
    if (els.downloadMenu.open && !els.downloadMenu.contains(e.target)) els.downloadMenu.open = false;
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && document.body.classList.contains('sidebar-open')) {
      closeSidebar();
      els.sessionsToggle.focus();
    }
  });
  window.addEventListener('hashchange', () => void openSession(sessionFromHash()));
  window.addEventListener('popstate', () => void openSession(sessionFromHash()));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible') return;
    void refreshSessions();
    // Another tab may have added to this chat meanwhile.
    if (state.sessionId && !busy()) void openSession(state.sessionId, { force: true });
  });
  void showModel();
  void refreshSessions();
  void openSession(sessionFromHash(), { force: true });
  els.message.focus();
}

start();
