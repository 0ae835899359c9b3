/*
 * jitbridge — ServiceNow Business Rule
 *
 * Paste this whole script into three Business Rules (see install.md for the click-path):
 *   1. Table "Requested Item" [sc_req_item]            When: after   Insert + Update
 *   2. Table "Incident" [incident]                      When: after   Insert + Update
 *   3. Table "Approval" [sysapproval_approver]          When: after   Insert + Update
 * The script is the same for all three; it reads the table from the record.
 *
 * It sends jitbridge the shared payload
 *   {"event_id": "<sys_id>:<sys_mod_count>", "table", "sys_id", "sys_mod_count", "operation",
 *    "sys_updated_on", "sys_updated_by", "record": {...every field as a string...},
 *    "changes": {"<field>": {"previous": "...", "current": "..."}, ...}}
 * signed with HMAC-SHA256 of the exact body, base64, in the X-Signature header — the defaults of
 * a jitbridge connector with kind = "servicenow" and inbound auth = "hmac-sha256".
 *
 * Configuration lives in system properties, never in this script:
 *   x_jitbridge.endpoint        e.g. https://jitbridge.example.com/webhooks/servicenow
 *   x_jitbridge.webhook_secret  the shared secret (type "password2" so it is stored encrypted)
 *
 * Nothing is sent when the endpoint or the secret is missing: an unsigned delivery would be
 * refused by jitbridge anyway, and the error log says what to fix (without the secret).
 */
(function executeRule(current, previous /* null when the rule runs async; run it "after" */) {
    var ENDPOINT_PROPERTY = 'x_jitbridge.endpoint';
    var SECRET_PROPERTY = 'x_jitbridge.webhook_secret';
    var SIGNATURE_HEADER = 'X-Signature';
    var TIMEOUT_MS = 10000;
    var LOG_SOURCE = 'jitbridge';

    var table = current.getTableName();
    var operation = String(current.operation() || 'update');

    // Only decisions and state moves matter to jitbridge (the rule's condition says the same;
    // checking again here keeps the script safe if the condition is edited away).
    function relevantChange() {
        if (operation === 'insert' || operation === 'delete') {
            return true;
        }
        if (table === 'sysapproval_approver') {
            return current.state.changes();
        }
        return current.approval.changes() || current.state.changes();
    }

    // Field types whose values must never leave the instance or that read back empty anyway.
    var SKIPPED_TYPES = {
        'password': true,
        'password2': true,
        'journal': true,
        'journal_input': true,
        'journal_list': true
    };

    // "https://instance.service-now.com/" — used to build reference links like the Table API.
    var instanceUrl = String(gs.getProperty('glide.servlet.uri') || '');
    if (instanceUrl && instanceUrl.charAt(instanceUrl.length - 1) !== '/') {
        instanceUrl += '/';
    }

    // getValue() gives the stored value as a string (null when empty): exactly the Table API's
    // sysparm_display_value=false representation.
    function valueOf(record, name) {
        if (!record) {
            return '';
        }
        var v = record.getValue(name);
        return v === null || v === undefined ? '' : String(v);
    }

    function internalType(element) {
        var ed = element.getED();
        return ed ? String(ed.getInternalType()) : '';
    }

    // A reference field as the Table API shows it: {"link": ".../api/now/table/<table>/<id>",
    // "value": "<sys_id>"}; an empty reference is "".
    function referenceOf(element, value) {
        if (!value) {
            return '';
        }
        var target = String(element.getReferenceTable() || '');
        return {
            link: target ? instanceUrl + 'api/now/table/' + target + '/' + value : '',
            value: value
        };
    }

    function buildRecord() {
        var record = {};
        var fields = current.getFields();
        for (var i = 0; i < fields.size(); i++) {
            var element = fields.get(i);
            var name = String(element.getName());
            var type = internalType(element);
            if (SKIPPED_TYPES[type]) {
                continue;
            }
            var value = valueOf(current, name);
            record[name] = type === 'reference' ? referenceOf(element, value) : value;
        }
        return record;
    }

    // Every non-system field whose stored value differs from the previous one.
    function buildChanges() {
        var changes = {};
        if (!previous || operation === 'insert') {
            return changes;
        }
        var fields = current.getFields();
        for (var i = 0; i < fields.size(); i++) {
            var element = fields.get(i);
            var name = String(element.getName());
            if (name.indexOf('sys_') === 0 || SKIPPED_TYPES[internalType(element)]) {
                continue;
            }
            var before = valueOf(previous, name);
            var after = valueOf(current, name);
            if (before !== after) {
                changes[name] = { previous: before, current: after };
            }
        }
        return changes;
    }

    // JSON with every non-ASCII character escaped, so the bytes jitbridge receives are exactly
    // the bytes that were signed whatever charset the HTTP stack picks.
    function asciiJson(value) {
        return JSON.stringify(value).replace(/[\u007f-\uffff]/g, function (c) {
            return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
        });
    }

    try {
        if (!relevantChange()) {
            return;
        }
        var endpoint = String(gs.getProperty(ENDPOINT_PROPERTY) || '');
        var secret = String(gs.getProperty(SECRET_PROPERTY) || '');
        if (!endpoint || !secret) {
            gs.error('jitbridge: system property ' + (endpoint ? SECRET_PROPERTY : ENDPOINT_PROPERTY) +
                ' is not set; nothing sent for ' + table + ' ' + current.getUniqueValue(), LOG_SOURCE);
            return;
        }

        var sysId = current.getUniqueValue();
        var modCount = valueOf(current, 'sys_mod_count') || '0';
        var body = asciiJson({
            event_id: sysId + ':' + modCount,
            table: table,
            sys_id: sysId,
            sys_mod_count: modCount,
            operation: operation,
            sys_updated_on: valueOf(current, 'sys_updated_on'),
            sys_updated_by: valueOf(current, 'sys_updated_by'),
            record: buildRecord(),
            changes: buildChanges()
        });

        // generateMac wants the key base64-encoded and returns a base64 digest.
        var signature = new GlideCertificateEncryption().generateMac(
            GlideStringUtil.base64Encode(secret), 'HmacSHA256', body);

        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(endpoint);
        request.setHttpMethod('post');
        request.setHttpTimeout(TIMEOUT_MS);
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('Accept', 'application/json');
        request.setRequestHeader(SIGNATURE_HEADER, signature);
        request.setRequestBody(body);
        // Queued through the ECC queue: the user's transaction never waits for jitbridge.
        request.executeAsync();
    } catch (e) {
        // The message never includes the secret or the signature.
        gs.error('jitbridge: could not send ' + table + ' ' + current.getUniqueValue() + ': ' + e, LOG_SOURCE);
    }
})(current, previous);
