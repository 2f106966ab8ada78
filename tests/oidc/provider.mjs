// tests/oidc/provider.mjs: loopback OpenID Provider for Gatehouse console CI tests.
// Needs oidc-provider 8.8.1 (tests/oidc/package.json) and Node.js >= 18 (tested on 20 upstream).
//
//   node tests/oidc/provider.mjs [PORT]    # PORT argv > $OIDC_PORT > 0 (0 = pick a free port)
//
// When it is ready, it prints one JSON line on stdout: {"event":"ready","issuer":"http://127.0.0.1:NNNNN",...}
// Environment (all optional):
//   OIDC_CLIENT_ID                  default gatehouse-console
//   OIDC_CLIENT_SECRET              default gatehouse-console-secret (use only [A-Za-z0-9-._~])
//   OIDC_REDIRECT_URIS              space/comma separated, exact match; default http://127.0.0.1:8080/console/callback
//   OIDC_POST_LOGOUT_REDIRECT_URIS  space/comma separated; default: none
//   OIDC_TOKEN_AUTH_METHOD          client_secret_basic (default) | client_secret_post
//   OIDC_PASSWORD                   if set, the login form requires this password; if unset, any password works
//   OIDC_USERS_JSON                 e.g. {"auditor1":["sec-auditors"],"bob":{"groups":[],"name":"Bob"}}
//   OIDC_FORCE_LOGIN=1              show the login form on every authorization request, even with an OP session
//   OIDC_JWKS_FILE                  a private JWK Set (JSON) to sign with, instead of a fresh RSA key
//   OIDC_EXIT_WITH_STDIN=1          exit when stdin closes (the parent that started it is gone)
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { readFileSync } from 'node:fs';

import { Provider, interactionPolicy, errors } from 'oidc-provider';

const env = process.env;
const HOST = '127.0.0.1';
const list = (v) => (v ?? '').split(/[\s,]+/).filter(Boolean);

const PORT = Number(process.argv[2] ?? env.OIDC_PORT ?? 0);
const CLIENT_ID = env.OIDC_CLIENT_ID ?? 'gatehouse-console';
const CLIENT_SECRET = env.OIDC_CLIENT_SECRET ?? 'gatehouse-console-secret';
const REDIRECT_URIS = list(env.OIDC_REDIRECT_URIS ?? 'http://127.0.0.1:8080/console/callback');
const POST_LOGOUT_REDIRECT_URIS = list(env.OIDC_POST_LOGOUT_REDIRECT_URIS);
const AUTH_METHOD = env.OIDC_TOKEN_AUTH_METHOD ?? 'client_secret_basic';
const PASSWORD = env.OIDC_PASSWORD; // undefined => accept any password (like devInteractions)
const FORCE_LOGIN = env.OIDC_FORCE_LOGIN === '1';

// login name -> groups claim. A login not listed here can still sign in, with groups [].
const USERS = env.OIDC_USERS_JSON ? JSON.parse(env.OIDC_USERS_JSON) : {
  auditor1: ['sec-auditors'],
  auditor2: ['sec-auditors'],
  approver1: ['cdao-approvers'],
  approver2: ['cdao-approvers'],
  requester1: ['data-requesters'],
  nobody1: [],
};

function userRecord(login) {
  const u = USERS[login];
  const rec = Array.isArray(u) ? { groups: u } : (u ?? { groups: [] });
  return {
    sub: login,
    email: rec.email ?? `${login}@gatehouse.test`,
    email_verified: true,
    name: rec.name ?? login,
    preferred_username: login,
    groups: rec.groups ?? [],
  };
}

// Signing keys: a fresh RSA-2048 key per process (RS256), unless a JWKS file is given.
function signingJwks() {
  if (env.OIDC_JWKS_FILE) return JSON.parse(readFileSync(env.OIDC_JWKS_FILE, 'utf8'));
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: `ci-${crypto.randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' }] };
}

// HTML without any external resource (the library's built-in pages @import Google Fonts).
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));
const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>
${body}
</body></html>`;

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// Same field names as the library's devInteractions login form: login, password, submit button "Sign-in".
const loginPage = (uid, { error, login } = {}) => page('Sign-in', `
${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" autocomplete="off" action="/interaction/${esc(uid)}/login" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" id="login" name="login" placeholder="Enter any login" value="${esc(login)}" autofocus>
  <input required type="password" id="password" name="password" placeholder="and password">
  <button type="submit" id="submit" class="login login-submit">Sign-in</button>
</form>
<p><a id="cancel" href="/interaction/${esc(uid)}/abort">[ Cancel ]</a></p>`);

// Only reached if a grant lacks something the request asks for (the login step grants everything).
const consentPage = (uid, details) => page('Authorize', `
<pre id="consent-details">${esc(JSON.stringify(details, null, 2))}</pre>
<form id="consent-form" autocomplete="off" action="/interaction/${esc(uid)}/confirm" method="post">
  <input type="hidden" name="prompt" value="consent"/>
  <button type="submit" id="submit" class="login login-submit">Continue</button>
</form>
<p><a id="cancel" href="/interaction/${esc(uid)}/abort">[ Cancel ]</a></p>`);

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 * 1024) throw new errors.InvalidRequest('request body too large');
  }
  return new URLSearchParams(body);
}

// Login prompt; no consent prompt follows (this client is first-party).
const policy = interactionPolicy.base();
if (FORCE_LOGIN) {
  const { Check } = interactionPolicy;
  policy.get('login').checks.add(new Check(
    'ci_force_login',
    'the CI provider asks for credentials on every authorization request',
    (ctx) => (ctx.oidc.result?.login ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT),
  ));
}

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: AUTH_METHOD,
    id_token_signed_response_alg: 'RS256',
  }],

  // PKCE: always required, S256 only (8.x keys; 9.x has no pkce.methods and is S256-only).
  pkce: {
    methods: ['S256'],
    required: () => true,
  },

  // Scopes are the keys whose value is an array; claims under a requested scope are released.
  scopes: ['openid'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // false => claims of the granted scopes go into the ID Token too, not only into userinfo.
  conformIdTokenClaims: false,

  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims(use, scope, claims, rejected) { return userRecord(sub); },
    };
  },

  jwks: signingJwks(),

  // Plain http on 127.0.0.1: no `secure` flag (the cookies module refuses `secure` on http),
  // SameSite=Lax (8.x defaults long cookies to SameSite=None, which Chromium drops when not Secure).
  // Own names, because cookies ignore the port and Gatehouse's console also lives on 127.0.0.1.
  cookies: {
    names: { session: 'op_session', interaction: 'op_interaction', resume: 'op_interaction_resume' },
    long: { httpOnly: true, sameSite: 'lax' },
    short: { httpOnly: true, sameSite: 'lax' },
    keys: [crypto.randomBytes(32).toString('base64url')],
  },

  features: {
    devInteractions: { enabled: false }, // own form below: no warning and no Google Fonts
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        // `form` is <form id="op.logoutForm" ...> with a hidden xsrf input.
        ctx.body = page('Sign out', `${form}
<button autofocus type="submit" id="logout-yes" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" id="logout-no" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Sign-out Success', '<p id="logged-out">Your sign-out was successful.</p>');
      },
    },
  },

  interactions: {
    policy,
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  // Seconds. Numbers also silence the "you SHOULD change it" notices.
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },

  clientBasedCORS: () => false, // Gatehouse talks to /token and /me from its server, not from a browser

  async renderError(ctx, out, error) {
    ctx.type = 'html';
    ctx.body = page('Error', `<pre id="error">${esc(out.error)}: ${esc(out.error_description)}</pre>`);
  },
};

let provider;

async function interactions(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction uid mismatch');
  const { prompt, params } = details;

  if (req.method === 'GET' && action === undefined) {
    if (prompt.name === 'login') return send(res, 200, loginPage(uid, { login: params.login_hint }));
    if (prompt.name === 'consent') return send(res, 200, consentPage(uid, prompt.details));
    return send(res, 501, page('Error', `<pre id="error">unsupported prompt ${esc(prompt.name)}</pre>`));
  }

  if (req.method === 'GET' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const login = (form.get('login') ?? '').trim();
    if (!login || (PASSWORD !== undefined && form.get('password') !== PASSWORD)) {
      return send(res, 200, loginPage(uid, { error: 'Invalid login or password', login }));
    }
    // Grant every requested OIDC scope now, so that no consent screen follows.
    const grant = new provider.Grant({ accountId: login, clientId: params.client_id });
    grant.addOIDCScope(params.scope ?? 'openid');
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, {
      login: { accountId: login },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
  }

  if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    await readForm(req);
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, {
      consent: details.grantId ? {} : { grantId },
    }, { mergeWithLastSubmission: true });
  }

  return send(res, 400, page('Error', '<pre id="error">invalid_request: unexpected interaction request</pre>'));
}

const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/;
let callback;

const server = http.createServer((req, res) => {
  if (!provider) return send(res, 503, page('Error', '<pre id="error">starting</pre>'));
  const { pathname } = new URL(req.url, `http://${HOST}`);
  const m = INTERACTION.exec(pathname);
  if (!m) return callback(req, res);
  interactions(req, res, m[1], m[2]).catch((err) => {
    console.error('interaction error:', err);
    if (!res.headersSent) {
      send(res, err.statusCode ?? 500, page('Error', `<pre id="error">${esc(err.error ?? 'server_error')}: ${esc(err.error_description ?? err.message)}</pre>`));
    }
  });
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  provider = new Provider(issuer, configuration);
  callback = provider.callback();

  // The wire error for a bad code_verifier is generic ("grant request is invalid"); the reason is here.
  for (const event of ['grant.error', 'authorization.error', 'end_session.error', 'userinfo.error', 'server_error']) {
    provider.on(event, (ctx, err) => {
      console.error(`[oidc] ${event}: ${err.error ?? err.name}: ${err.error_description ?? err.message}${err.error_detail ? ` (${err.error_detail})` : ''}`);
    });
  }

  console.log(JSON.stringify({
    event: 'ready',
    issuer,
    discovery: `${issuer}/.well-known/openid-configuration`,
    client_id: CLIENT_ID,
    redirect_uris: REDIRECT_URIS,
  }));
});

// Started by another program with a pipe on stdin: end with it, so a parent that dies
// (killed, not stopped) does not leave the provider behind.
if (env.OIDC_EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { server.closeAllConnections(); server.close(); process.exit(0); });
}
