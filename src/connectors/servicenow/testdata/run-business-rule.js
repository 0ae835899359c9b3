// Runs connectors/servicenow/business-rule.js under a minimal mock of the Glide APIs and writes
// the body it would send to business-rule-ritm-approved.json (the fixture of tests.rs), printing
// the request and whether its X-Signature is base64(HMAC-SHA256(secret, body)). Usage: node run-business-rule.js
const fs = require('fs'), crypto = require('crypto');
const script = fs.readFileSync(require('path').join(__dirname, '../../../../connectors/servicenow/business-rule.js'), 'utf8');
const props = {'x_jitbridge.endpoint': 'http://127.0.0.1:8080/webhooks/servicenow', 'x_jitbridge.webhook_secret': 'topsecret', 'glide.servlet.uri': 'https://dev1234.service-now.com/'};
let sent = null;
const gs = { getProperty: k => props[k] || null, error: (m) => console.error('gs.error', m) };
class GlideStringUtil { static base64Encode(s) { return Buffer.from(s, 'utf8').toString('base64'); } }
class GlideCertificateEncryption { generateMac(k, alg, body) { return crypto.createHmac('sha256', Buffer.from(k, 'base64')).update(body, 'utf8').digest('base64'); } }
const sn_ws = { RESTMessageV2: class { constructor(){ this.h = {}; } setEndpoint(e){this.e=e;} setHttpMethod(m){this.m=m;} setHttpTimeout(){} setRequestHeader(k,v){this.h[k]=v;} setRequestBody(b){this.b=b;} executeAsync(){ sent = this; } } };
function el(name, type, ref) { return { getName: () => name, getED: () => ({ getInternalType: () => type }), getReferenceTable: () => ref || '' }; }
function rec(table, values, types, op) {
  const fields = Object.keys(values).map(n => el(n, (types[n]||[])[0] || 'string', (types[n]||[])[1]));
  const r = { getTableName: () => table, operation: () => op, getUniqueValue: () => values.sys_id,
    getValue: n => (values[n] === '' || values[n] === undefined) ? null : values[n],
    getFields: () => ({ size: () => fields.length, get: i => fields[i] }) };
  for (const n of Object.keys(values)) r[n] = { changes: () => r.__prev ? r.__prev.getValue(n) !== r.getValue(n) : true };
  return r;
}
const types = { requested_for: ['reference','sys_user'], opened_by: ['reference','sys_user'], work_notes: ['journal_input'], u_secret: ['password2'] };
const base = { sys_id: '3f1d6b9f1b2231d0a8b4ed7bbc4bcb22', number: 'RITM0010001', state: '1', approval: 'requested', requested_for: '46d44a5e1b2231d0a8b4ed7bbc4bcb33', opened_by: '', short_description: 'Local admin on WS-0042 — café', u_target: 'WS-0042', u_duration: '2h', work_notes: 'x', u_secret: 'pw', sys_mod_count: '4', sys_updated_on: '2025-03-14 08:41:37', sys_updated_by: 'bob.approver', sys_class_name: 'sc_req_item' };
const previous = rec('sc_req_item', base, types, 'update');
const current = rec('sc_req_item', Object.assign({}, base, { state: '2', approval: 'approved', sys_mod_count: '5' }), types, 'update');
current.__prev = previous;
new Function('current', 'previous', 'gs', 'GlideStringUtil', 'GlideCertificateEncryption', 'sn_ws', script)(current, previous, gs, GlideStringUtil, GlideCertificateEncryption, sn_ws);
const expect = crypto.createHmac('sha256', 'topsecret').update(Buffer.from(sent.b, 'utf8')).digest('base64');
console.log(JSON.stringify({ endpoint: sent.e, method: sent.m, headers: sent.h, sigok: expect === sent.h['X-Signature'], ascii: /^[\x00-\x7e]*$/.test(sent.b) }));
fs.writeFileSync(require('path').join(__dirname, 'business-rule-ritm-approved.json'), sent.b);
console.log(sent.b);
