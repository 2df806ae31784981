// Who the console is signed in as. With principals configured (`/console/session-info` says
// `authRequired`), the console asks for an API token (sent as `Authorization: Bearer`) and MQTT
// credentials (sent in the test client's CONNECT) before anything else.
//
// The credentials live in this module and in sessionStorage, nowhere else: not localStorage
// (which outlives the browser session and is shared by every tab), not URLs (which end up in
// history and logs). sessionStorage keeps them across a reload of this tab and drops them when
// the tab closes. The trade-off: a script running on this origin could read them, as it could
// read memory; the strict Content-Security-Policy and the console's textContent-only rendering
// are what keep foreign script out. Sign out removes them.

const STORAGE_KEY = 'retaind.console.credentials';

/** `{ token, mqttUsername, mqttPassword }`, each possibly '', or null when not signed in. */
let current = load();
let authRequired = false;

function load() {
  try {
    const parsed = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? 'null');
    if (parsed && typeof parsed === 'object') {
      return {
        token: String(parsed.token ?? ''),
        mqttUsername: String(parsed.mqttUsername ?? ''),
        mqttPassword: String(parsed.mqttPassword ?? ''),
      };
    }
  } catch {
    // unreadable or unavailable storage: start signed out
  }
  return null;
}

/**
 * Asks the server whether sign-in is needed. If it cannot say (network failure), the console
 * behaves as without principals, and a refused API call still offers to sign in.
 */
export async function discover() {
  try {
    const response = await fetch('/console/session-info', { cache: 'no-store' });
    if (response.ok) authRequired = (await response.json()).authRequired === true;
  } catch {
    authRequired = false;
  }
  return authRequired;
}

export function isAuthRequired() {
  return authRequired;
}

export function credentials() {
  return current;
}

export function signIn({ token = '', mqttUsername = '', mqttPassword = '' }) {
  current = { token, mqttUsername, mqttPassword };
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(current));
  } catch {
    // storage unavailable (e.g. disabled): keep them in memory for this page only
  }
}

export function signOut() {
  current = null;
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing stored
  }
}

/** Headers for an API call: the bearer token when signed in with one. */
export function authHeaders() {
  return current?.token ? { Authorization: `Bearer ${current.token}` } : {};
}

/** Options for the MQTT client: the user name and password when signed in with them. */
export function mqttCredentials() {
  if (!current?.mqttUsername) return {};
  return { username: current.mqttUsername, password: current.mqttPassword };
}
