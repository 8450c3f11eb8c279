/* manifest-fast: the compiled client of the watcher's command server, as Mercurial's chg is
 * hg's. Optional: `manifest build-client` compiles it (docs/operations.md, "A status in a
 * few milliseconds").
 *
 * It does what manifest/entry.py and manifest/client.py do for a plain `manifest status`
 * line, without starting Python (~20 ms on a small machine, most of a served status): find
 * the store folder the settings name, connect to the command socket of the watcher running
 * for it, hand over the standard descriptors, folder, umask, environment and arguments, and
 * relay the answer. Anything else, and anything it cannot serve (no watcher, another store,
 * other code than the watcher runs, a locale whose output Python would encode otherwise),
 * it leaves to the Python program: it execs `MANIFEST_PYTHON -m manifest` with the same
 * arguments before writing a byte. So it changes how fast the answer comes, never what it
 * says. The protocol is the Python client's (version 2: `pid N`, `go`, then `page LENGTH`
 * blocks and `exit CODE`, or `fallback REASON`); tests/test_native_client.py holds the two
 * programs to the same output and exit codes.
 *
 * The code's identity it sends is "native": the interpreter it execs (path, mtime, size)
 * and every module of the package it was built for (manifest.client.native_identity). A
 * watcher started from other code answers `fallback`.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MANIFEST_PYTHON
#error "build with -DMANIFEST_PYTHON=<interpreter> (manifest build-client does)"
#endif
#ifndef MANIFEST_PACKAGE
#error "build with -DMANIFEST_PACKAGE=<the manifest package folder> (manifest build-client does)"
#endif

#define PROTOCOL "2"
#define FIRST_REPLY_MS 5000 /* manifest.client.FIRST_REPLY_TIMEOUT */

extern char **environ;

static int g_argc;
static char **g_argv;
static volatile sig_atomic_t committed = 0; /* "go" is sent: the command runs in the watcher */

static void broke_off(void) {
    fputs("manifest: error: the watcher's answer broke off; run the command again\n", stderr);
    exit(3);
}

/* -- the Python program: everything this client does not serve ------------------------- */

/* Never once "go" is sent (the command would run twice): then any failure breaks off. */
static void run_python(void) {
    if (committed) broke_off();
    /* -P: not the current folder first on sys.path (`python -m` puts it there; the
     * installed program does not): a manifest/ or manifest.py in it is not this code */
    char **args = calloc((size_t)g_argc + 4, sizeof *args);
    if (args != NULL) {
        args[0] = MANIFEST_PYTHON;
        args[1] = "-P";
        args[2] = "-m";
        args[3] = "manifest";
        for (int i = 1; i < g_argc; i++) args[i + 3] = g_argv[i];
        execv(MANIFEST_PYTHON, args);
    }
    fprintf(stderr, "manifest: error: cannot run %s: %s; rebuild the client (manifest "
            "build-client) or run manifest\n", MANIFEST_PYTHON, strerror(errno));
    exit(3);
}

/* -- growing buffers and string lists -------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL) run_python();
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void puts0(buf_t *b, const char *s) { put(b, s, strlen(s)); }

typedef struct {
    char **items;
    size_t len, cap;
} list_t;

static void add(list_t *l, char *s) {
    if (s == NULL) run_python();
    if (l->len == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        char **items = realloc(l->items, l->cap * sizeof *items);
        if (items == NULL) run_python();
        l->items = items;
    }
    l->items[l->len++] = s;
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *format(const char *fmt, ...) {
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    if (vasprintf(&out, fmt, ap) < 0) out = NULL;
    va_end(ap);
    if (out == NULL) run_python();
    return out;
}

/* -- the line: manifest/statusline.py's parse_status, the parts that choose the store -- */

typedef struct {
    const char *directory, *store, *name;
} group_t;

static const char *GROUP_VALUES[] = {"-C", "--root", "--store", "--name", "--mode", "--cooldown"};
static const char *GROUP_FLAGS[] = {"--no-pager"};
static const char *STATUS_VALUES[] = {"--limit"};
static const char *STATUS_FLAGS[] = {"--json", "--exit-code", "--fingerprints"};
#define COUNT(a) (sizeof(a) / sizeof *(a))

static int among(const char *word, size_t n, const char **names, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (strlen(names[i]) == n && strncmp(word, names[i], n) == 0) return (int)i;
    return -1;
}

/* The option at argv[i]: the index after it, or 0 when the line is not plain (then the
 * Python program reads it). seen: one flag per option, as each may come once. */
static int take(int i, const char **values, size_t nv, const char **flags, size_t nf,
                int *seen, const char **value_out) {
    const char *word = g_argv[i];
    const char *eq = strncmp(word, "--", 2) == 0 ? strchr(word, '=') : NULL;
    size_t n = eq ? (size_t)(eq - word) : strlen(word);
    int k;
    int step;
    *value_out = NULL;
    if (!eq && (k = among(word, n, flags, nf)) >= 0) {
        step = 1;
        k += (int)nv;
    } else if ((k = among(word, n, values, nv)) >= 0) {
        if (eq) {
            *value_out = eq + 1;
            step = 1;
        } else if (i + 1 < g_argc && g_argv[i + 1][0] != '-') {
            *value_out = g_argv[i + 1];
            step = 2;
        } else {
            return 0;
        }
    } else {
        return 0;
    }
    if (seen[k]) return 0;
    seen[k] = 1;
    return i + step;
}

static int parse_status(group_t *group) {
    int seen[16] = {0};
    int i = 1;
    const char *value;
    while (i < g_argc && strcmp(g_argv[i], "status") != 0) {
        int next = take(i, GROUP_VALUES, COUNT(GROUP_VALUES), GROUP_FLAGS, COUNT(GROUP_FLAGS),
                        seen, &value);
        if (next == 0) return 0;
        const char *word = g_argv[i];
        if (value != NULL) {
            if (strncmp(word, "-C", 2) == 0) group->directory = value;
            else if (strncmp(word, "--store", 7) == 0) group->store = value;
            else if (strncmp(word, "--name", 6) == 0) group->name = value;
        }
        i = next;
    }
    if (i == g_argc) return 0;
    int seen_status[16] = {0};
    for (i++; i < g_argc;) {
        int next = take(i, STATUS_VALUES, COUNT(STATUS_VALUES), STATUS_FLAGS,
                        COUNT(STATUS_FLAGS), seen_status, &value);
        if (next == 0) return 0;
        i = next;
    }
    return 1; /* (a bad --limit or --cooldown: the server's parse says fallback) */
}

/* -- the store folder: manifest.client.find_store_folder ------------------------------- */

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* os.path.join(base, os.path.expanduser(text)); NULL for "~user" (left to Python) */
static char *join_user(const char *base, const char *text) {
    if (text[0] == '~') {
        const char *home = getenv("HOME");
        if (home == NULL || (text[1] != '\0' && text[1] != '/')) return NULL;
        char *expanded = format("%s%s", home, text + 1);
        if (expanded[0] == '/') return expanded;
        char *out = format("%s/%s", base, expanded);
        free(expanded);
        return out;
    }
    if (text[0] == '/') return format("%s", text);
    return format("%s/%s", base, text);
}

static char *stripped(const char *name) {
    const char *value = getenv(name);
    if (value == NULL) return NULL;
    while (*value != '\0' && strchr(" \t\n\r\v\f\x1c\x1d\x1e\x1f", *value) != NULL) value++;
    size_t n = strlen(value);
    while (n > 0 && strchr(" \t\n\r\v\f\x1c\x1d\x1e\x1f", value[n - 1]) != NULL) n--;
    if (n == 0) return NULL;
    char *out = strndup(value, n);
    if (out == NULL) run_python();
    return out;
}

static char *find_store_folder(const group_t *group, const char *cwd) {
    const char *text = group->store;
    char *env_text = NULL;
    if (text == NULL) text = env_text = stripped("RAW_STATE_DIR");
    if (text != NULL) {
        if (text[0] == '\0' || strstr(text, "://") != NULL) return NULL;
        return join_user(cwd, text);
    }
    if (group->name == NULL || group->name[0] == '\0') {
        char *folder = format("%s", cwd);
        for (;;) {
            char *config = format("%s/.manifest/config.toml", strcmp(folder, "/") ? folder : "");
            int found = is_file(config);
            free(config);
            if (found) return format("%s/.manifest", strcmp(folder, "/") ? folder : "");
            char *slash = strrchr(folder, '/');
            if (slash == NULL || strcmp(folder, "/") == 0) break;
            if (slash == folder) slash[1] = '\0';
            else *slash = '\0';
        }
        free(folder);
    }
    char *home = stripped("DAGSTER_HOME");
    if (home == NULL)
        return (group->name && group->name[0]) ? NULL : format("%s/.manifest", cwd);
    char *dagster = join_user(cwd, home);
    if (dagster == NULL) return NULL;
    char *state = format("%s/state", dagster);
    if (group->name && group->name[0]) return format("%s/%s", state, group->name);
    char *marker = format("%s/FORMAT", state);
    if (is_file(marker)) return state;
    DIR *dir = opendir(state);
    const char *only = NULL;
    int names = 0;
    if (dir != NULL) {
        struct dirent *entry;
        while ((entry = readdir(dir)) != NULL) {
            if (entry->d_name[0] == '.' && (!entry->d_name[1] || !strcmp(entry->d_name, "..")))
                continue;
            char *format_file = format("%s/%s/FORMAT", state, entry->d_name);
            if (is_file(format_file)) {
                names++;
                only = strdup(entry->d_name);
            }
            free(format_file);
        }
        closedir(dir);
    }
    if (names > 1) return NULL; /* ambiguous: the program says so */
    return format("%s/%s", state, names == 1 ? only : "raw");
}

/* -- the code's identity: manifest.client.native_identity ------------------------------ */

static void modules(list_t *parts, const char *folder) {
    DIR *dir = opendir(folder);
    if (dir == NULL) run_python();
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        const char *name = entry->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        char *path = format("%s/%s", folder, name);
        struct stat st;
        size_t n = strlen(name);
        if (lstat(path, &st) != 0) run_python();
        if (n >= 3 && strcmp(name + n - 3, ".py") == 0) {
            add(parts, format("%s:%lld:%lld", path,
                              (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                              (long long)st.st_size));
        } else if (strcmp(name, "__pycache__") != 0 && S_ISDIR(st.st_mode)) {
            modules(parts, path);
        }
        free(path);
    }
    closedir(dir);
}

static int by_bytes(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void identity(buf_t *out) {
    list_t parts = {0};
    struct stat st;
    if (stat(MANIFEST_PYTHON, &st) != 0) run_python();
    add(&parts, format("native"));
    add(&parts, format("python:%s:%lld:%lld", MANIFEST_PYTHON,
                       (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                       (long long)st.st_size));
    add(&parts, format("%s", MANIFEST_PACKAGE));
    modules(&parts, MANIFEST_PACKAGE);
    qsort(parts.items, parts.len, sizeof *parts.items, by_bytes);
    for (size_t i = 0; i < parts.len; i++) {
        if (i) put(out, "\n", 1);
        puts0(out, parts.items[i]);
    }
}

/* -- standard output as Python would make it ------------------------------------------ */

/* Python 3.11's choice for this environment, or 0 where it is not the plain one (then the
 * Python program answers: its encoding rules are its own). Where Python would coerce the C
 * locale (PEP 538: it sets LC_CTYPE=C.UTF-8 in its own environment, which the program
 * then hands to the watcher and to the pager), so does this client. */
static int stdio_settings(const char **encoding, const char **errors, const char **buffering) {
    if (getenv("PYTHONIOENCODING") || getenv("PYTHONUTF8") || getenv("PYTHONCOERCECLOCALE") ||
        getenv("PYTHONLEGACYWINDOWSSTDIO"))
        return 0;
    const char *locale = setlocale(LC_CTYPE, "");
    if (locale == NULL) locale = "C"; /* not installed: Python finds the C locale too */
    int c_locale = !strcmp(locale, "C") || !strcmp(locale, "POSIX");
    if (c_locale) {
        const char *all = getenv("LC_ALL");
        if (all != NULL && *all) return 0; /* LC_ALL=C: Python does not coerce; left to it */
        static const char *targets[] = {"C.UTF-8", "C.utf8", "UTF-8"};
        const char *target = NULL;
        for (size_t i = 0; i < COUNT(targets) && target == NULL; i++)
            if (setlocale(LC_CTYPE, targets[i]) != NULL) target = targets[i];
        if (target == NULL) return 0;
        if (setenv("LC_CTYPE", target, 1) != 0) return 0;
    }
    int utf8 = !strcasecmp(nl_langinfo(CODESET), "UTF-8");
    if (!c_locale && !utf8) return 0;
    *encoding = "utf-8";
    /* the C locale turns on Python's UTF-8 mode; C.UTF-8 is its coercion target */
    *errors = (c_locale || !strcasecmp(locale, "C.UTF-8") || !strcasecmp(locale, "C.utf8"))
                  ? "surrogateescape"
                  : "strict";
    const char *unbuffered = getenv("PYTHONUNBUFFERED");
    *buffering = (unbuffered && *unbuffered) ? "none" : isatty(1) ? "line" : "block";
    return 1;
}

/* -- the conversation ------------------------------------------------------------------ */

static int sock = -1;
static buf_t in = {0};
static volatile sig_atomic_t interrupts = 0;
static volatile pid_t command_pid = 0; /* the command's process, until its exit is read */

/* Ctrl-C: before "go" the client leaves (130; the watcher runs nothing for a client that
 * hung up); after it, the command gets it (the terminal signals only this process) and its
 * exit code follows; a second one leaves at once. */
static void on_sigint(int sig) {
    (void)sig;
    if (++interrupts >= 2) _exit(130);
    if (committed && command_pid > 0) kill(command_pid, SIGINT);
}

static void interrupted_before_go(void) {
    if (interrupts && !committed) exit(130);
}

/* More bytes into `in`: 1; 0 at the end; -1 on an error or the timeout. */
static int fill(int timeout_ms) {
    char chunk[65536];
    for (;;) {
        if (timeout_ms >= 0) {
            struct pollfd p = {sock, POLLIN, 0};
            int ready = poll(&p, 1, timeout_ms);
            if (ready == 0) return -1;
            if (ready < 0 && errno != EINTR) return -1;
            if (ready < 0) {
                interrupted_before_go();
                continue;
            }
        }
        ssize_t n = recv(sock, chunk, sizeof chunk, 0);
        if (n > 0) {
            put(&in, chunk, (size_t)n);
            return 1;
        }
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
        interrupted_before_go();
    }
}

static size_t taken = 0; /* bytes of `in` already read */

/* The next line (without its newline, NUL-terminated in place), or NULL at the end. */
static char *line(int timeout_ms) {
    for (;;) {
        char *start = in.data ? in.data + taken : NULL;
        char *end = start ? memchr(start, '\n', in.len - taken) : NULL;
        if (end != NULL) {
            *end = '\0';
            taken = (size_t)(end - in.data) + 1;
            return start;
        }
        if (fill(timeout_ms) <= 0) return NULL;
    }
}

/* The next `size` bytes (a page), or NULL at the end. */
static char *block(size_t size) {
    while (in.len - taken < size)
        if (fill(-1) <= 0) return NULL;
    char *start = in.data + taken;
    taken += size;
    return start;
}

/* All of `data` (with the descriptors `fds` alongside its first bytes, when given): 1, or
 * 0 when the watcher does not take it within the send timeout. */
static int send_all(const char *data, size_t size, const int *fds, size_t nfds) {
    size_t done = 0;
    while (done < size) {
        ssize_t sent;
        if (done == 0 && nfds > 0) {
            char control[CMSG_SPACE(3 * sizeof(int))];
            memset(control, 0, sizeof control);
            struct iovec iov = {(void *)data, size};
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                                 .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
            memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
            sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
        } else {
            sent = send(sock, data + done, size - done, MSG_NOSIGNAL);
        }
        if (sent < 0 && errno == EINTR) {
            interrupted_before_go();
            continue;
        }
        if (sent <= 0) return 0;
        done += (size_t)sent;
    }
    return 1;
}

/* The pager (a shell command, as git runs $PAGER) on this terminal, with the page on its
 * input. Ctrl-C while it runs is the pager's: this process waits for it, as git does. */
static void run_pager(const char *page, size_t size) {
    const char *command = getenv("MANIFEST_PAGER");
    if (command == NULL || !*command) command = getenv("PAGER");
    if (command == NULL || !*command) command = "less -FRX";
    int pipe_fds[2];
    fflush(stdout);
    if (pipe(pipe_fds) != 0) {
        fwrite(page, 1, size, stdout);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        fwrite(page, 1, size, stdout);
        return;
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        dup2(pipe_fds[0], 0);
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        execl("/bin/sh", "sh", "-c", command, (char *)NULL);
        _exit(127);
    }
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN); /* the reader quit early: that is fine */
    close(pipe_fds[0]);
    for (size_t done = 0; done < size;) {
        ssize_t n = write(pipe_fds[1], page + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += (size_t)n;
    }
    close(pipe_fds[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

static int serve(void) {
    group_t group = {0};
    if (!parse_status(&group)) return 0;
    const char *encoding, *errors, *buffering;
    if (!stdio_settings(&encoding, &errors, &buffering)) return 0;
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd) == NULL) return 0;
    char *base = !group.directory              ? format("%s", cwd)
                 : group.directory[0] == '/' ? format("%s", group.directory)
                                             : format("%s/%s", cwd, group.directory);
    char *folder = find_store_folder(&group, base);
    struct stat st;
    if (folder == NULL || stat(folder, &st) != 0) return 0;

    /* Non-blocking: a watcher too busy to accept (its queue full), or a name another
     * process bound and never accepts on, is no server. Then the sends wait at most 1 s. */
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0) return 0;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "manifest-commands-%llx-%llx",
                     (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (connect(sock, (struct sockaddr *)&addr, len) != 0) return 0;
    struct ucred cred;
    socklen_t cred_len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0 || cred.uid != getuid())
        return 0; /* not this user's watcher: nothing is sent to it */
    int flags = fcntl(sock, F_GETFL);
    struct timeval send_timeout = {1, 0}; /* manifest.client.CONNECT_TIMEOUT */
    if (flags < 0 || fcntl(sock, F_SETFL, flags & ~O_NONBLOCK) != 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout) != 0)
        return 0;

    buf_t body = {0};
    char number[32];
    puts0(&body, PROTOCOL);
    put(&body, "", 1);
    identity(&body);
    put(&body, "", 1);
    puts0(&body, cwd);
    put(&body, "", 1);
    mode_t mask = umask(022);
    umask(mask);
    snprintf(number, sizeof number, "%d", (int)mask);
    puts0(&body, number);
    const char *fields[] = {encoding, errors, buffering};
    for (size_t i = 0; i < 3; i++) {
        put(&body, "", 1);
        puts0(&body, fields[i]);
    }
    put(&body, "", 1);
    snprintf(number, sizeof number, "%d", g_argc - 1);
    puts0(&body, number);
    for (int i = 1; i < g_argc; i++) {
        put(&body, "", 1);
        puts0(&body, g_argv[i]);
    }
    /* the environment as Python's os.environb has it: NAME=value entries only, the first
     * of a name given twice */
    for (char **e = environ; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || eq == *e) continue;
        size_t name = (size_t)(eq - *e) + 1;
        int again = 0;
        for (char **f = environ; f != e && !again; f++) again = strncmp(*f, *e, name) == 0;
        if (again) continue;
        put(&body, "", 1);
        puts0(&body, *e);
    }
    buf_t request = {0};
    snprintf(number, sizeof number, "run %zu\n", body.len);
    puts0(&request, number);
    put(&request, body.data, body.len);
    int fds[3] = {0, 1, 2};
    if (!send_all(request.data, request.len, fds, 3)) return 0;

    char *first = line(FIRST_REPLY_MS);
    if (first == NULL || strncmp(first, "pid ", 4) != 0) return 0; /* fallback, or no reply */
    command_pid = (pid_t)atol(first + 4);
    /* Committed once the watcher has "go": the command runs then, and only then. A Ctrl-C
     * while it is sent is held back until committed says which way it goes. */
    sigset_t block_int, before;
    sigemptyset(&block_int);
    sigaddset(&block_int, SIGINT);
    sigprocmask(SIG_BLOCK, &block_int, &before);
    committed = send_all("go\n", 3, NULL, 0);
    sigprocmask(SIG_SETMASK, &before, NULL);
    if (!committed) return 0; /* the watcher did not take it: nothing runs there */
    if (interrupts) kill(command_pid, SIGINT); /* one that came while it was sent */

    char *page = NULL;
    size_t page_size = 0;
    for (;;) {
        char *reply = line(-1);
        if (reply == NULL) {
            if (interrupts) exit(130);
            fputs("manifest: error: the watcher stopped while it answered; run the command "
                  "again\n", stderr);
            exit(3);
        }
        if (strncmp(reply, "fallback", 8) == 0 && (reply[8] == ' ' || reply[8] == '\0')) {
            if (interrupts) exit(130);
            committed = 0; /* the child ran nothing: the program answers */
            return 0;
        }
        if (strncmp(reply, "page ", 5) == 0) {
            size_t size = (size_t)strtoull(reply + 5, NULL, 10);
            const char *got = block(size);
            if (got == NULL) continue; /* the end: said above */
            free(page);
            page = malloc(size ? size : 1); /* its own: `in` moves as it grows */
            if (page == NULL) broke_off();
            memcpy(page, got, size);
            page_size = size;
        } else if (strncmp(reply, "exit ", 5) == 0) {
            command_pid = 0; /* ended and reaped: its pid may be another process's now */
            int code = atoi(reply + 5);
            if (interrupts) exit(page != NULL ? 130 : code);
            if (page != NULL) run_pager(page, page_size);
            exit(code);
        }
    }
}

static int off(const char *value) {
    if (value == NULL) return 0;
    char word[8];
    size_t n = 0;
    while (*value && strchr(" \t\n\r\v\f", *value)) value++;
    while (*value && !strchr(" \t\n\r\v\f", *value) && n < sizeof word - 1) word[n++] = *value++;
    word[n] = '\0';
    while (*value && strchr(" \t\n\r\v\f", *value)) value++;
    if (*value) return 0;
    return !strcasecmp(word, "0") || !strcasecmp(word, "off") || !strcasecmp(word, "no") ||
           !strcasecmp(word, "false");
}

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    if (!off(getenv("MANIFEST_SERVER")) && getenv("_MANIFEST_COMPLETE") == NULL) {
        struct sigaction action = {.sa_handler = on_sigint};
        sigemptyset(&action.sa_mask);
        sigaction(SIGINT, &action, NULL); /* no SA_RESTART: a wait sees EINTR */
        serve(); /* returns only when it ran nothing: the program answers */
        if (sock >= 0) close(sock);
        signal(SIGINT, SIG_DFL);
        if (interrupts) exit(130);
    }
    run_python();
}
