/*
 * nc_tls_callhome: a NETCONF device made of Debian's libnetconf2 2.0.x
 * (libnetconf2-dev 2.0.24, libyang2-dev 2.1), calling a manager home over
 * TLS (RFC 8071 section 4, NETCONF over TLS per RFC 7589).
 *
 * The library does all the protocol work: the outgoing TCP connection and
 * its retries (its call-home thread), the TLS server side (OpenSSL), the
 * check of the manager's certificate (trusted certificate list, then
 * cert-to-name), the hello, both framings and <close-session>.  This
 * program only configures it and answers <get> and <get-config> with a
 * small data tree a test can recognise:
 *
 *   <device xmlns="urn:example:callhome:libnetconf2-peer">
 *     <hostname>HOSTNAME</hostname> <location>...</location>
 *     <state> <netconf-session-id/> <tls-username/> <rpcs-served/> </state>   (get only)
 *   </device>
 *
 * A <get> or <get-config> whose subtree filter is empty selects nothing
 * (RFC 6241 section 6.4.2) and is answered with an empty <data/>: that is
 * how callhome's keepalive probe of a persistent TLS session looks; each
 * one is logged as "probe answered".  Any other operation gets
 * operation-not-supported.
 *
 * Usage:
 *   nc_tls_callhome --port PORT --cert DEVICE.pem --key DEVICE.key
 *                   --trusted MANAGER_OR_CA.pem --fingerprint AB:CD:..
 *                   [--host 127.0.0.1] [--username NAME] [--mode periodic|persistent]
 *                   [--period MINUTES] [--idle-timeout SECONDS] [--sessions N]
 *                   [--hostname NAME] [--quiet]
 *
 *   --fingerprint  the SHA-256 fingerprint of the manager's certificate
 *                  (colon-separated hex, either case) for the cert-to-name
 *                  entry; with --username the entry maps it to that name
 *                  ("specified"), without it to the certificate's CN.
 *   --sessions N   exit (status 0) once N NETCONF sessions have ended;
 *                  0 (the default) serves until SIGTERM.
 *
 * On stderr: libnetconf2's own log (verbose unless --quiet) and lines
 * starting "nc_tls_callhome:", among them "nc_tls_callhome: ready" once
 * the call-home thread runs, "session N established (user U)", "rpc
 * NAME", "probe answered", "session N ended (REASON)".  SIGTERM or
 * SIGINT: stop calling, close the sessions, exit 0.  Exit status 2: bad
 * arguments; 1: libnetconf2 refused the configuration.
 *
 * Written against the 2.0.24 headers (nc_server_init(ctx), certificate
 * and trusted-list callbacks, nc_server_tls_ch_client_endpt_*): the
 * 2.1+/3.x API (YANG-data configuration) is different.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libyang/libyang.h>

/*
 * Not <nc_server.h>: it defines NC_ENABLED_SSH, and libnetconf2's headers
 * then include libssh's, which Debian's libnetconf2-dev does not pull in
 * (libssh-dev).  This program speaks TLS only, so it takes the headers
 * with NC_ENABLED_TLS alone.  The library itself is built with SSH, whose
 * NC_TI_LIBSSH precedes NC_TI_OPENSSL in NC_TRANSPORT_IMPL: without SSH
 * the header's NC_TI_OPENSSL is one less than the library's, hence
 * LIB_TI_OPENSSL.  (Were it wrong, the endpoint would not be a TLS one and
 * nc_server_tls_ch_client_endpt_set_server_cert() would refuse it.)
 */
#define NC_ENABLED_TLS
#include <libnetconf2/netconf.h>
#include <libnetconf2/log.h>
#include <libnetconf2/messages_server.h>
#include <libnetconf2/session_server.h>
#include <libnetconf2/session_server_ch.h>

#define LIB_TI_OPENSSL ((NC_TRANSPORT_IMPL)(NC_TI_UNIX + 2)) /* NC_TI_UNIX, NC_TI_LIBSSH, NC_TI_OPENSSL */

#define CLIENT "manager"
#define ENDPT "tls"
#define CERT_NAME "device-certificate"
#define TRUST_NAME "manager-trust"
#define DATA_NS "urn:example:callhome:libnetconf2-peer"
#define LOCATION "loopback rack, libnetconf2 call home"

/*
 * ietf-netconf@2013-09-29 (RFC 6241) as libnetconf2 v2.0.24 ships it in
 * its source tree's modules/ (Debian installs no YANG modules with the
 * library, and libnetconf2 needs the module in its context to parse RPCs):
 * descriptions and references removed, and the ietf-netconf-acm import
 * with its nacm:default-deny-* markers dropped (NACM is not enforced here).
 */
static const char *ietf_netconf_yang =
    "module ietf-netconf {\n"
    "  namespace \"urn:ietf:params:xml:ns:netconf:base:1.0\";\n"
    "  prefix nc;\n"
    "  import ietf-inet-types {\n"
    "    prefix inet;\n"
    "  }\n"
    "  revision 2013-09-29;\n"
    "  revision 2011-06-01;\n"
    "  extension get-filter-element-attributes;\n"
    "  feature writable-running;\n"
    "  feature candidate;\n"
    "  feature confirmed-commit {\n"
    "    if-feature candidate;\n"
    "  }\n"
    "  feature rollback-on-error;\n"
    "  feature validate;\n"
    "  feature startup;\n"
    "  feature url;\n"
    "  feature xpath;\n"
    "  typedef session-id-type {\n"
    "    type uint32 {\n"
    "      range \"1..max\";\n"
    "    }\n"
    "  }\n"
    "  typedef session-id-or-zero-type {\n"
    "    type uint32;\n"
    "  }\n"
    "  typedef error-tag-type {\n"
    "    type enumeration {\n"
    "       enum in-use;\n"
    "       enum invalid-value;\n"
    "       enum too-big;\n"
    "       enum missing-attribute;\n"
    "       enum bad-attribute;\n"
    "       enum unknown-attribute;\n"
    "       enum missing-element;\n"
    "       enum bad-element;\n"
    "       enum unknown-element;\n"
    "       enum unknown-namespace;\n"
    "       enum access-denied;\n"
    "       enum lock-denied;\n"
    "       enum resource-denied;\n"
    "       enum rollback-failed;\n"
    "       enum data-exists;\n"
    "       enum data-missing;\n"
    "       enum operation-not-supported;\n"
    "       enum operation-failed;\n"
    "       enum partial-operation;\n"
    "       enum malformed-message;\n"
    "     }\n"
    "  }\n"
    "  typedef error-severity-type {\n"
    "    type enumeration {\n"
    "      enum error;\n"
    "      enum warning;\n"
    "    }\n"
    "  }\n"
    "  typedef edit-operation-type {\n"
    "    type enumeration {\n"
    "      enum merge;\n"
    "      enum replace;\n"
    "      enum create;\n"
    "      enum delete;\n"
    "      enum remove;\n"
    "    }\n"
    "    default \"merge\";\n"
    "  }\n"
    "  rpc get-config {\n"
    "    input {\n"
    "      container source {\n"
    "        choice config-source {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            type empty;\n"
    "          }\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "      anyxml filter {\n"
    "        nc:get-filter-element-attributes;\n"
    "      }\n"
    "    }\n"
    "    output {\n"
    "      anyxml data;\n"
    "    }\n"
    "  }\n"
    "  rpc edit-config {\n"
    "    input {\n"
    "      container target {\n"
    "        choice config-target {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            if-feature writable-running;\n"
    "            type empty;\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "      leaf default-operation {\n"
    "        type enumeration {\n"
    "          enum merge;\n"
    "          enum replace;\n"
    "          enum none;\n"
    "        }\n"
    "        default \"merge\";\n"
    "      }\n"
    "      leaf test-option {\n"
    "        if-feature validate;\n"
    "        type enumeration {\n"
    "          enum test-then-set;\n"
    "          enum set;\n"
    "          enum test-only;\n"
    "        }\n"
    "        default \"test-then-set\";\n"
    "      }\n"
    "      leaf error-option {\n"
    "        type enumeration {\n"
    "          enum stop-on-error;\n"
    "          enum continue-on-error;\n"
    "          enum rollback-on-error;\n"
    "        }\n"
    "        default \"stop-on-error\";\n"
    "      }\n"
    "      choice edit-content {\n"
    "        mandatory true;\n"
    "        anyxml config;\n"
    "        leaf url {\n"
    "          if-feature url;\n"
    "          type inet:uri;\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc copy-config {\n"
    "    input {\n"
    "      container target {\n"
    "        choice config-target {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            if-feature writable-running;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf url {\n"
    "            if-feature url;\n"
    "            type inet:uri;\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "      container source {\n"
    "        choice config-source {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            type empty;\n"
    "          }\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf url {\n"
    "            if-feature url;\n"
    "            type inet:uri;\n"
    "          }\n"
    "          anyxml config;\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc delete-config {\n"
    "    input {\n"
    "      container target {\n"
    "        choice config-target {\n"
    "          mandatory true;\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf url {\n"
    "            if-feature url;\n"
    "            type inet:uri;\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc lock {\n"
    "    input {\n"
    "      container target {\n"
    "        choice config-target {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            type empty;\n"
    "          }\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc unlock {\n"
    "    input {\n"
    "      container target {\n"
    "        choice config-target {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            type empty;\n"
    "          }\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc get {\n"
    "    input {\n"
    "      anyxml filter {\n"
    "        nc:get-filter-element-attributes;\n"
    "      }\n"
    "    }\n"
    "    output {\n"
    "      anyxml data;\n"
    "    }\n"
    "  }\n"
    "  rpc close-session;\n"
    "  rpc kill-session {\n"
    "    input {\n"
    "      leaf session-id {\n"
    "        type session-id-type;\n"
    "        mandatory true;\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc commit {\n"
    "    if-feature candidate;\n"
    "    input {\n"
    "      leaf confirmed {\n"
    "        if-feature confirmed-commit;\n"
    "        type empty;\n"
    "      }\n"
    "      leaf confirm-timeout {\n"
    "        if-feature confirmed-commit;\n"
    "        type uint32 {\n"
    "          range \"1..max\";\n"
    "        }\n"
    "        units \"seconds\";\n"
    "        default \"600\";\n"
    "      }\n"
    "      leaf persist {\n"
    "        if-feature confirmed-commit;\n"
    "        type string;\n"
    "      }\n"
    "      leaf persist-id {\n"
    "        if-feature confirmed-commit;\n"
    "        type string;\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc discard-changes {\n"
    "    if-feature candidate;\n"
    "  }\n"
    "  rpc cancel-commit {\n"
    "    if-feature confirmed-commit;\n"
    "    input {\n"
    "      leaf persist-id {\n"
    "        type string;\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "  rpc validate {\n"
    "    if-feature validate;\n"
    "    input {\n"
    "      container source {\n"
    "        choice config-source {\n"
    "          mandatory true;\n"
    "          leaf candidate {\n"
    "            if-feature candidate;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf running {\n"
    "            type empty;\n"
    "          }\n"
    "          leaf startup {\n"
    "            if-feature startup;\n"
    "            type empty;\n"
    "          }\n"
    "          leaf url {\n"
    "            if-feature url;\n"
    "            type inet:uri;\n"
    "          }\n"
    "          anyxml config;\n"
    "        }\n"
    "      }\n"
    "    }\n"
    "  }\n"
    "}\n"
    ;

static struct {
    const char *host, *cert, *key, *trusted, *fingerprint, *username, *hostname;
    int port, persistent, period, idle_timeout, sessions, quiet;
} opt = {"127.0.0.1", NULL, NULL, NULL, NULL, NULL, "libnetconf2-device", 0, 0, 1, 120, 0, 0};

static volatile sig_atomic_t stopping;
static struct nc_pollsession *ps;
static struct ly_ctx *ctx;
static unsigned long rpcs_served, probes_answered;

static void
say(const char *format, ...)
{
    va_list ap;
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    flockfile(stderr);
    fprintf(stderr, "%lld.%03ld nc_tls_callhome: ", (long long)now.tv_sec, now.tv_nsec / 1000000);
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    funlockfile(stderr);
}

static void
print_clb(const struct nc_session *session, NC_VERB_LEVEL level, const char *msg)
{
    static const char *names[] = {"ERROR", "WARNING", "VERBOSE", "DEBUG", "DEBUG_LOWLVL"};
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    flockfile(stderr);
    fprintf(stderr, "%lld.%03ld libnetconf2 %s", (long long)now.tv_sec, now.tv_nsec / 1000000,
            (unsigned)level < sizeof names / sizeof *names ? names[level] : "?");
    if (session) {
        fprintf(stderr, " (session %u)", nc_session_get_id(session));
    }
    fprintf(stderr, ": %s\n", msg);
    funlockfile(stderr);
}

/* --- what libnetconf2 asks for by name --------------------------------------------------- */

static int
server_cert_clb(const char *name, void *user_data, char **cert_path, char **cert_data, char **privkey_path,
        char **privkey_data, NC_SSH_KEY_TYPE *privkey_type)
{
    (void)user_data; (void)cert_data; (void)privkey_data; (void)privkey_type;
    if (strcmp(name, CERT_NAME)) {
        return 1;
    }
    *cert_path = strdup(opt.cert);
    *privkey_path = strdup(opt.key);
    return !*cert_path || !*privkey_path;
}

static int
trusted_list_clb(const char *name, void *user_data, char ***cert_paths, int *cert_path_count, char ***cert_data,
        int *cert_data_count)
{
    (void)user_data; (void)cert_data; (void)cert_data_count;
    if (strcmp(name, TRUST_NAME)) {
        return 1;
    }
    *cert_paths = malloc(sizeof **cert_paths);
    if (!*cert_paths || !((*cert_paths)[0] = strdup(opt.trusted))) {
        return 1;
    }
    *cert_path_count = 1;
    return 0;
}

/* --- the RPCs ---------------------------------------------------------------------------- */

/* Whether an anyxml <filter> holds nothing (the probe's <filter type="subtree"/>). */
static int
filter_is_empty(const struct lyd_node *filter)
{
    const struct lyd_node_any *any = (const struct lyd_node_any *)filter;
    const char *s;

    switch (any->value_type) {
    case LYD_ANYDATA_DATATREE:
        return any->value.tree == NULL;
    case LYD_ANYDATA_STRING:
    case LYD_ANYDATA_XML:
    case LYD_ANYDATA_JSON:
        for (s = any->value.str; s && *s; ++s) {
            if (!strchr(" \t\r\n", *s)) {
                return 0;
            }
        }
        return 1;
    default:
        return 0;
    }
}

static struct nc_server_reply *
error_reply(NC_ERR tag, const char *message)
{
    struct lyd_node *err = nc_err(ctx, tag, NC_ERR_TYPE_PROT);

    if (err && message) {
        nc_err_set_msg(err, message, "en");
    }
    return nc_server_reply_err(err);
}

/* The device's data as XML: config (hostname, location), and its state too when state is non-zero. */
static char *
device_xml(int state, struct nc_session *session)
{
    const char *user = nc_session_get_username(session);
    char *xml = NULL;
    int len;

    if (!user || strpbrk(user, "<>&")) {
        user = "?"; /* the CN mapping takes the name from a certificate: print nothing to escape */
    }
    if (state) {
        len = asprintf(&xml, "<device xmlns=\"" DATA_NS "\"><hostname>%s</hostname><location>%s</location>"
                "<state><netconf-session-id>%u</netconf-session-id><tls-username>%s</tls-username>"
                "<rpcs-served>%lu</rpcs-served></state></device>",
                opt.hostname, LOCATION, nc_session_get_id(session), user, rpcs_served);
    } else {
        len = asprintf(&xml, "<device xmlns=\"" DATA_NS "\"><hostname>%s</hostname><location>%s</location></device>",
                opt.hostname, LOCATION);
    }
    return len < 0 ? NULL : xml;
}

static struct nc_server_reply *
rpc_clb(struct lyd_node *rpc, struct nc_session *session)
{
    const char *name = LYD_NAME(rpc);
    struct lyd_node *filter = NULL, *reply = NULL, *data = NULL;
    char *xml;
    int get, empty;

    ++rpcs_served;
    get = !strcmp(name, "get");
    if (!get && strcmp(name, "get-config")) {
        say("rpc %s: not supported", name);
        return error_reply(NC_ERR_OP_NOT_SUPPORTED, "this test device answers get and get-config only");
    }
    /* Only an empty subtree filter is honoured (it selects nothing); any other filter gets everything. */
    empty = !lyd_find_path(rpc, "filter", 0, &filter) && filter && filter_is_empty(filter);
    xml = empty ? strdup("") : device_xml(get, session);
    if (!xml) {
        return error_reply(NC_ERR_OP_FAILED, "out of memory");
    }
    /* The reply is the RPC node itself with its output (<data>, anyxml) under it. */
    if (lyd_dup_single(rpc, NULL, 0, &reply) || lyd_new_any(reply, NULL, "data", xml, 0, LYD_ANYDATA_XML, 1, &data)) {
        free(xml);
        lyd_free_tree(reply);
        return error_reply(NC_ERR_OP_FAILED, "cannot build the reply");
    }
    free(xml);
    if (empty) {
        ++probes_answered;
        say("rpc %s with an empty filter: probe answered (%lu so far)", name, probes_answered);
    } else {
        say("rpc %s answered", name);
    }
    return nc_server_reply_data(reply, NC_WD_EXPLICIT, NC_PARAMTYPE_FREE);
}

/* --- call home ----------------------------------------------------------------------------- */

static int
session_clb(const char *client_name, struct nc_session *session)
{
    say("session %u established with call-home client %s (user %s)", nc_session_get_id(session), client_name,
            nc_session_get_username(session) ? nc_session_get_username(session) : "?");
    if (nc_ps_add_session(ps, session)) {
        say("cannot poll session %u", nc_session_get_id(session));
        return 1;
    }
    return 0;
}

static const char *
term_reason(NC_SESSION_TERM_REASON reason)
{
    switch (reason) {
    case NC_SESSION_TERM_CLOSED: return "closed by <close-session>";
    case NC_SESSION_TERM_KILLED: return "killed";
    case NC_SESSION_TERM_DROPPED: return "dropped by the manager";
    case NC_SESSION_TERM_TIMEOUT: return "timed out";
    case NC_SESSION_TERM_BADHELLO: return "bad hello";
    default: return "other";
    }
}

static void
on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void
usage(const char *argv0)
{
    fprintf(stderr, "usage: %s --port PORT --cert PEM --key PEM --trusted PEM --fingerprint SHA256 "
            "[--host ADDR] [--username NAME] [--mode periodic|persistent] [--period MIN] "
            "[--idle-timeout S] [--sessions N] [--hostname NAME] [--quiet]\n", argv0);
}

static int
parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'H'}, {"port", required_argument, NULL, 'p'},
        {"cert", required_argument, NULL, 'c'}, {"key", required_argument, NULL, 'k'},
        {"trusted", required_argument, NULL, 't'}, {"fingerprint", required_argument, NULL, 'f'},
        {"username", required_argument, NULL, 'u'}, {"mode", required_argument, NULL, 'm'},
        {"period", required_argument, NULL, 'P'}, {"idle-timeout", required_argument, NULL, 'i'},
        {"sessions", required_argument, NULL, 's'}, {"hostname", required_argument, NULL, 'n'},
        {"quiet", no_argument, NULL, 'q'}, {NULL, 0, NULL, 0},
    };
    int c;
    char *end;
    long value = 0;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (strchr("pPis", c)) {
            errno = 0;
            value = strtol(optarg, &end, 10);
            if (errno || *end || value < 0 || value > 65535) {
                fprintf(stderr, "%s: not a number from 0 to 65535: %s\n", argv[0], optarg);
                return -1;
            }
        }
        switch (c) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = (int)value; break;
        case 'c': opt.cert = optarg; break;
        case 'k': opt.key = optarg; break;
        case 't': opt.trusted = optarg; break;
        case 'f': opt.fingerprint = optarg; break;
        case 'u': opt.username = optarg; break;
        case 'm':
            if (strcmp(optarg, "periodic") && strcmp(optarg, "persistent")) {
                fprintf(stderr, "%s: --mode is periodic or persistent\n", argv[0]);
                return -1;
            }
            opt.persistent = !strcmp(optarg, "persistent");
            break;
        case 'P': opt.period = (int)value; break;
        case 'i': opt.idle_timeout = (int)value; break;
        case 's': opt.sessions = (int)value; break;
        case 'n': opt.hostname = optarg; break;
        case 'q': opt.quiet = 1; break;
        default: return -1;
        }
    }
    if (optind != argc || !opt.port || !opt.cert || !opt.key || !opt.trusted || !opt.fingerprint || opt.period < 1) {
        return -1;
    }
    if (strpbrk(opt.hostname, "<>&\"'")) {
        fprintf(stderr, "%s: --hostname must not need XML escaping\n", argv[0]);
        return -1;
    }
    return 0;
}

#define CHECK(call) do { if (call) { say("libnetconf2 refused: %s", #call); return 1; } } while (0)

static int
configure(void)
{
    char *ctn_fingerprint;

    nc_server_tls_set_server_cert_clb(server_cert_clb, NULL, NULL);
    nc_server_tls_set_trusted_cert_list_clb(trusted_list_clb, NULL, NULL);

    CHECK(nc_server_ch_add_client(CLIENT));
    CHECK(nc_server_ch_client_add_endpt(CLIENT, ENDPT, LIB_TI_OPENSSL));
    CHECK(nc_server_ch_client_endpt_set_address(CLIENT, ENDPT, opt.host));
    CHECK(nc_server_ch_client_endpt_set_port(CLIENT, ENDPT, (uint16_t)opt.port));
    CHECK(nc_server_tls_ch_client_endpt_set_server_cert(CLIENT, ENDPT, CERT_NAME));
    CHECK(nc_server_tls_ch_client_endpt_add_trusted_cert_list(CLIENT, ENDPT, TRUST_NAME));
    /* cert-to-name (RFC 7589 section 7, ietf-x509-cert-to-name): "04" is SHA-256. */
    if (asprintf(&ctn_fingerprint, "04:%s", opt.fingerprint) < 0) {
        return 1;
    }
    if (opt.username) {
        CHECK(nc_server_tls_ch_client_endpt_add_ctn(CLIENT, ENDPT, 1, ctn_fingerprint, NC_TLS_CTN_SPECIFIED, opt.username));
    } else {
        CHECK(nc_server_tls_ch_client_endpt_add_ctn(CLIENT, ENDPT, 1, ctn_fingerprint, NC_TLS_CTN_COMMON_NAME, NULL));
    }
    free(ctn_fingerprint);
    if (opt.persistent) {
        CHECK(nc_server_ch_client_set_conn_type(CLIENT, NC_CH_PERSIST));
    } else {
        CHECK(nc_server_ch_client_set_conn_type(CLIENT, NC_CH_PERIOD));
        CHECK(nc_server_ch_client_periodic_set_period(CLIENT, (uint16_t)opt.period));
        CHECK(nc_server_ch_client_periodic_set_idle_timeout(CLIENT, (uint16_t)opt.idle_timeout));
    }
    return 0;
}

int
main(int argc, char **argv)
{
    struct sigaction sa;
    struct nc_session *session;
    int r, ended = 0;

    if (parse_args(argc, argv)) {
        usage(argv[0]);
        return 2;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* A write to a connection the manager closed must be an error, not the end. */
    signal(SIGPIPE, SIG_IGN);

    nc_verbosity(opt.quiet ? NC_VERB_WARNING : NC_VERB_VERBOSE);
    nc_set_print_clb_session(print_clb);

    if (ly_ctx_new(NULL, LY_CTX_DISABLE_SEARCHDIR_CWD, &ctx) || lys_parse_mem(ctx, ietf_netconf_yang, LYS_IN_YANG, NULL)) {
        say("cannot build the YANG context");
        return 1;
    }
    if (nc_server_init(ctx)) {
        say("nc_server_init failed");
        return 1;
    }
    nc_set_global_rpc_clb(rpc_clb);
    ps = nc_ps_new();
    if (!ps || configure()) {
        return 1;
    }
    if (nc_connect_ch_client_dispatch(CLIENT, session_clb)) {
        say("cannot start the call-home thread");
        return 1;
    }
    say("ready: calling %s port %d over TLS, %s, pid %d", opt.host, opt.port,
            opt.persistent ? "persistent" : "periodic", (int)getpid());

    while (!stopping) {
        session = NULL;
        r = nc_ps_poll(ps, 100, &session);
        if (r & NC_PSPOLL_NOSESSIONS) {
            usleep(20000);
            continue;
        }
        if (r & NC_PSPOLL_ERROR) {
            say("nc_ps_poll failed (0x%x)", r);
        }
        if ((r & (NC_PSPOLL_SESSION_TERM | NC_PSPOLL_SESSION_ERROR)) && session) {
            say("session %u ended (%s%s)", nc_session_get_id(session), term_reason(nc_session_get_term_reason(session)),
                    (r & NC_PSPOLL_SESSION_ERROR) ? ", not by close-session" : "");
            nc_ps_del_session(ps, session);
            nc_session_free(session, NULL);
            if (opt.sessions && ++ended >= opt.sessions) {
                say("%d session(s) ended: done", ended);
                break;
            }
        }
    }

    /* Stop calling first (a persistent client would call again at once), then close what is open. */
    nc_server_ch_del_client(CLIENT);
    say("closing %u session(s); %lu rpc(s) served, %lu probe(s) answered", nc_ps_session_count(ps), rpcs_served,
            probes_answered);
    nc_ps_clear(ps, 1, NULL);
    nc_ps_free(ps);
    say("exiting");
    /* The library's call-home thread may still be inside OpenSSL: no exit handlers. */
    fflush(stderr);
    _exit(0);
}
