/*
 * Fake libnvidia-ml.so.1 for tests: the NVML prototypes the agent uses, backed by a JSON state
 * file named by FAKE_NVML_STATE (re-read whenever its inode/size/mtime/ctime change).
 *
 * State format (see tests/helpers/fake_state.ts):
 *   {"driverVersion": "580.159.04",
 *    "fail": {"nvmlDeviceGetCount_v2": 999},                    (optional, non-device functions)
 *    "gpus": [{"uuid": "GPU-…", "name": "NVIDIA H100 80GB HBM3", "pciBusId": "00000000:18:00.0",
 *              "minLimitMw": 200000, "maxLimitMw": 700000, "defaultLimitMw": 700000,
 *              "limitMw": 700000, "enforcedLimitMw": 650000 (optional; default limitMw; null =
 *              NOT_SUPPORTED), "powerUsageMw": 95000 (optional; absent = NOT_SUPPORTED),
 *              "energyMj": 0 (optional; absent = NOT_SUPPORTED),
 *              "processes": [{"pid": 4242, "usedGpuMemory": 0}],
 *              "fail": {"nvmlDeviceSetPowerManagementLimit": 4},
 *              "migDevices": [{"uuid": "MIG-…", "processes": [...]}, null (= empty slot)],
 *              "growProcessesOnSecondCall": 3,        (test hook, once per state load)
 *              "processesAlwaysInsufficient": true}]}  (test hook: never enough room)
 *
 * A successful nvmlDeviceSetPowerManagementLimit writes the whole state back atomically (temp
 * file + rename; unknown keys and number spellings are preserved) and appends
 * "<epoch ms> set <uuid> <mW>\n" to FAKE_NVML_LOG when that is set.
 *
 * Build variants: -DFAKE_NVML_V1_ONLY omits the _v2/_v3 process symbols, -DFAKE_NVML_NO_MIG omits
 * the MIG symbols. Build with -fvisibility=hidden so only the NVML symbols are exported.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- nvml.h subset */

typedef enum nvmlReturn_enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_UNINITIALIZED = 1,
  NVML_ERROR_INVALID_ARGUMENT = 2,
  NVML_ERROR_NOT_SUPPORTED = 3,
  NVML_ERROR_NO_PERMISSION = 4,
  NVML_ERROR_ALREADY_INITIALIZED = 5,
  NVML_ERROR_NOT_FOUND = 6,
  NVML_ERROR_INSUFFICIENT_SIZE = 7,
  NVML_ERROR_INSUFFICIENT_POWER = 8,
  NVML_ERROR_DRIVER_NOT_LOADED = 9,
  NVML_ERROR_TIMEOUT = 10,
  NVML_ERROR_IRQ_ISSUE = 11,
  NVML_ERROR_LIBRARY_NOT_FOUND = 12,
  NVML_ERROR_FUNCTION_NOT_FOUND = 13,
  NVML_ERROR_CORRUPTED_INFOROM = 14,
  NVML_ERROR_GPU_IS_LOST = 15,
  NVML_ERROR_RESET_REQUIRED = 16,
  NVML_ERROR_OPERATING_SYSTEM = 17,
  NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
  NVML_ERROR_IN_USE = 19,
  NVML_ERROR_MEMORY = 20,
  NVML_ERROR_NO_DATA = 21,
  NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22,
  NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
  NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
  NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
  NVML_ERROR_DEPRECATED = 26,
  NVML_ERROR_NOT_READY = 27,
  NVML_ERROR_GPU_NOT_FOUND = 28,
  NVML_ERROR_INVALID_STATE = 29,
  NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30,
  NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct nvmlPciInfo_st {
  char busIdLegacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pciDeviceId;
  unsigned int pciSubSystemId;
  char busId[32];
} nvmlPciInfo_t;

typedef struct nvmlProcessInfo_v1_st {
  unsigned int pid;
  unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct nvmlProcessInfo_v2_st {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

typedef nvmlProcessInfo_v2_t nvmlProcessInfo_t;

_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t must be 68 bytes");
_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16, "nvmlProcessInfo_v1_t must be 16 bytes");
_Static_assert(sizeof(nvmlProcessInfo_v2_t) == 24, "nvmlProcessInfo_v2_t must be 24 bytes");

#define EXPORT __attribute__((visibility("default")))
#define MAYBE_UNUSED __attribute__((unused)) /* MIG functions are compiled out by -DFAKE_NVML_NO_MIG */

/* ---------------------------------------------------------------- JSON tree */

typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } jtype;

typedef struct jval {
  jtype type;
  double num;       /* J_NUMBER */
  char *raw;        /* J_NUMBER: original spelling (NULL once changed) */
  char *str;        /* J_STRING */
  size_t len;       /* J_ARRAY / J_OBJECT: number of children */
  size_t cap;
  struct jval **items;
  char **keys; /* J_OBJECT only */
} jval;

static void jfree(jval *v) {
  if (!v) return;
  for (size_t i = 0; i < v->len; i++) {
    jfree(v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->raw);
  free(v->str);
  free(v);
}

static jval *jnew(jtype type) {
  jval *v = calloc(1, sizeof(jval));
  if (v) v->type = type;
  return v;
}

static int jpush(jval *parent, char *key, jval *child) {
  if (parent->len == parent->cap) {
    size_t cap = parent->cap ? parent->cap * 2 : 8;
    jval **items = realloc(parent->items, cap * sizeof(jval *));
    if (!items) return -1;
    parent->items = items;
    if (parent->type == J_OBJECT) {
      char **keys = realloc(parent->keys, cap * sizeof(char *));
      if (!keys) return -1;
      parent->keys = keys;
    }
    parent->cap = cap;
  }
  parent->items[parent->len] = child;
  if (parent->type == J_OBJECT) parent->keys[parent->len] = key;
  parent->len++;
  return 0;
}

typedef struct {
  const char *s;
  size_t pos;
  size_t n;
  int depth;
} jparser;

static void jskip_ws(jparser *p) {
  while (p->pos < p->n) {
    char c = p->s[p->pos];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->pos++;
    else break;
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int read_hex4(jparser *p, unsigned *out) {
  if (p->pos + 4 > p->n) return -1;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(p->s[p->pos + i]);
    if (h < 0) return -1;
    v = (v << 4) | (unsigned)h;
  }
  p->pos += 4;
  *out = v;
  return 0;
}

static size_t put_utf8(char *dst, unsigned cp) {
  if (cp < 0x80) {
    dst[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    dst[0] = (char)(0xC0 | (cp >> 6));
    dst[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    dst[0] = (char)(0xE0 | (cp >> 12));
    dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  dst[0] = (char)(0xF0 | (cp >> 18));
  dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  dst[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a JSON string at p->pos (which points at the opening quote). */
static char *jparse_string_raw(jparser *p) {
  if (p->pos >= p->n || p->s[p->pos] != '"') return NULL;
  p->pos++;
  /* Decoded output is never longer than the escaped input. */
  char *out = malloc(p->n - p->pos + 1);
  if (!out) return NULL;
  size_t o = 0;
  while (p->pos < p->n) {
    unsigned char c = (unsigned char)p->s[p->pos++];
    if (c == '"') {
      out[o] = '\0';
      return out;
    }
    if (c < 0x20) break;
    if (c != '\\') {
      out[o++] = (char)c;
      continue;
    }
    if (p->pos >= p->n) break;
    char e = p->s[p->pos++];
    switch (e) {
      case '"': out[o++] = '"'; break;
      case '\\': out[o++] = '\\'; break;
      case '/': out[o++] = '/'; break;
      case 'b': out[o++] = '\b'; break;
      case 'f': out[o++] = '\f'; break;
      case 'n': out[o++] = '\n'; break;
      case 'r': out[o++] = '\r'; break;
      case 't': out[o++] = '\t'; break;
      case 'u': {
        unsigned cp;
        if (read_hex4(p, &cp) != 0) goto fail;
        if (cp >= 0xD800 && cp <= 0xDBFF && p->pos + 6 <= p->n && p->s[p->pos] == '\\' &&
            p->s[p->pos + 1] == 'u') {
          unsigned lo;
          p->pos += 2;
          if (read_hex4(p, &lo) != 0) goto fail;
          if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          else goto fail;
        }
        o += put_utf8(out + o, cp);
        break;
      }
      default: goto fail;
    }
  }
fail:
  free(out);
  return NULL;
}

static jval *jparse_value(jparser *p);

static jval *jparse_number(jparser *p) {
  size_t start = p->pos;
  if (p->pos < p->n && p->s[p->pos] == '-') p->pos++;
  size_t digits = 0;
  while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++, digits++;
  if (digits == 0) return NULL;
  if (p->pos < p->n && p->s[p->pos] == '.') {
    p->pos++;
    digits = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++, digits++;
    if (digits == 0) return NULL;
  }
  if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
    p->pos++;
    if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
    digits = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++, digits++;
    if (digits == 0) return NULL;
  }
  jval *v = jnew(J_NUMBER);
  if (!v) return NULL;
  v->raw = strndup(p->s + start, p->pos - start);
  if (!v->raw) {
    free(v);
    return NULL;
  }
  v->num = strtod(v->raw, NULL);
  return v;
}

static int jexpect_word(jparser *p, const char *word) {
  size_t len = strlen(word);
  if (p->pos + len > p->n || strncmp(p->s + p->pos, word, len) != 0) return -1;
  p->pos += len;
  return 0;
}

static jval *jparse_container(jparser *p, int object) {
  char close = object ? '}' : ']';
  jval *v = jnew(object ? J_OBJECT : J_ARRAY);
  if (!v) return NULL;
  p->pos++; /* opening bracket */
  if (++p->depth > 64) goto fail;
  jskip_ws(p);
  if (p->pos < p->n && p->s[p->pos] == close) {
    p->pos++;
    p->depth--;
    return v;
  }
  for (;;) {
    char *key = NULL;
    jskip_ws(p);
    if (object) {
      key = jparse_string_raw(p);
      if (!key) goto fail;
      jskip_ws(p);
      if (p->pos >= p->n || p->s[p->pos] != ':') {
        free(key);
        goto fail;
      }
      p->pos++;
    }
    jval *child = jparse_value(p);
    if (!child || jpush(v, key, child) != 0) {
      free(key);
      jfree(child);
      goto fail;
    }
    jskip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == ',') {
      p->pos++;
      continue;
    }
    if (p->pos < p->n && p->s[p->pos] == close) {
      p->pos++;
      p->depth--;
      return v;
    }
    goto fail;
  }
fail:
  jfree(v);
  return NULL;
}

static jval *jparse_value(jparser *p) {
  jskip_ws(p);
  if (p->pos >= p->n) return NULL;
  char c = p->s[p->pos];
  if (c == '{') return jparse_container(p, 1);
  if (c == '[') return jparse_container(p, 0);
  if (c == '"') {
    char *s = jparse_string_raw(p);
    if (!s) return NULL;
    jval *v = jnew(J_STRING);
    if (!v) {
      free(s);
      return NULL;
    }
    v->str = s;
    return v;
  }
  if (c == 't') return jexpect_word(p, "true") == 0 ? jnew(J_TRUE) : NULL;
  if (c == 'f') return jexpect_word(p, "false") == 0 ? jnew(J_FALSE) : NULL;
  if (c == 'n') return jexpect_word(p, "null") == 0 ? jnew(J_NULL) : NULL;
  return jparse_number(p);
}

static jval *jparse(const char *s, size_t n) {
  jparser p = {s, 0, n, 0};
  jval *v = jparse_value(&p);
  if (!v) return NULL;
  jskip_ws(&p);
  if (p.pos != p.n) {
    jfree(v);
    return NULL;
  }
  return v;
}

/* Growable output buffer for serialization. */
typedef struct {
  char *buf;
  size_t len;
  size_t cap;
  int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (b->len + n + 1 > cap) cap *= 2;
    char *nb = realloc(b->buf, cap);
    if (!nb) {
      b->oom = 1;
      return;
    }
    b->buf = nb;
    b->cap = cap;
  }
  memcpy(b->buf + b->len, s, n);
  b->len += n;
  b->buf[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_indent(sbuf *b, int depth) {
  sb_put(b, "\n", 1);
  for (int i = 0; i < depth; i++) sb_put(b, "  ", 2);
}

static void sb_json_string(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    char esc[8];
    switch (*c) {
      case '"': sb_put(b, "\\\"", 2); break;
      case '\\': sb_put(b, "\\\\", 2); break;
      case '\n': sb_put(b, "\\n", 2); break;
      case '\r': sb_put(b, "\\r", 2); break;
      case '\t': sb_put(b, "\\t", 2); break;
      default:
        if (*c < 0x20) {
          snprintf(esc, sizeof esc, "\\u%04x", *c);
          sb_str(b, esc);
        } else {
          sb_put(b, (const char *)c, 1);
        }
    }
  }
  sb_put(b, "\"", 1);
}

static void jserialize(sbuf *b, const jval *v, int depth) {
  char num[64];
  switch (v->type) {
    case J_NULL: sb_str(b, "null"); return;
    case J_TRUE: sb_str(b, "true"); return;
    case J_FALSE: sb_str(b, "false"); return;
    case J_NUMBER:
      if (v->raw) {
        sb_str(b, v->raw);
      } else if (v->num == (double)(long long)v->num) {
        snprintf(num, sizeof num, "%lld", (long long)v->num);
        sb_str(b, num);
      } else {
        snprintf(num, sizeof num, "%.17g", v->num);
        sb_str(b, num);
      }
      return;
    case J_STRING: sb_json_string(b, v->str); return;
    case J_ARRAY:
    case J_OBJECT: {
      int object = v->type == J_OBJECT;
      sb_str(b, object ? "{" : "[");
      for (size_t i = 0; i < v->len; i++) {
        if (i) sb_str(b, ",");
        sb_indent(b, depth + 1);
        if (object) {
          sb_json_string(b, v->keys[i]);
          sb_str(b, ": ");
        }
        jserialize(b, v->items[i], depth + 1);
      }
      if (v->len) sb_indent(b, depth);
      sb_str(b, object ? "}" : "]");
      return;
    }
  }
}

static jval *jget(const jval *obj, const char *key) {
  if (!obj || obj->type != J_OBJECT) return NULL;
  for (size_t i = 0; i < obj->len; i++) {
    if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
  }
  return NULL;
}

static int jget_num(const jval *obj, const char *key, double *out) {
  jval *v = jget(obj, key);
  if (!v || v->type != J_NUMBER) return 0;
  *out = v->num;
  return 1;
}

static const char *jget_str(const jval *obj, const char *key, const char *fallback) {
  jval *v = jget(obj, key);
  return v && v->type == J_STRING ? v->str : fallback;
}

static size_t jarray_len(const jval *v) { return v && v->type == J_ARRAY ? v->len : 0; }

static unsigned int to_u32(double d) {
  if (!(d > 0)) return 0;
  if (d >= 4294967295.0) return 4294967295u;
  return (unsigned int)d;
}

/* ---------------------------------------------------------------- global state */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_init_count;
static jval *g_root;
static char *g_path;
static struct stat g_stat;
static int *g_grown; /* per GPU: growProcessesOnSecondCall already applied since the last load */
static size_t g_grown_len;

static int same_file_version(const struct stat *a, const struct stat *b) {
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
         a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
         a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static jval *gpus_array(void) {
  jval *gpus = jget(g_root, "gpus");
  return gpus && gpus->type == J_ARRAY ? gpus : NULL;
}

static size_t gpu_count(void) { return jarray_len(gpus_array()); }

static jval *gpu_at(size_t index) {
  jval *gpus = gpus_array();
  if (!gpus || index >= gpus->len) return NULL;
  jval *gpu = gpus->items[index];
  return gpu->type == J_OBJECT ? gpu : NULL;
}

/*
 * Makes g_root reflect the state file. Re-reads when the path or the file changed (or when
 * force is set). On a failed re-read the last good state is kept unless force is set.
 * Returns 0 when a state is available.
 */
static int load_state(int force) {
  const char *path = getenv("FAKE_NVML_STATE");
  if (!path || !*path) return -1;
  struct stat st;
  if (stat(path, &st) != 0) return force || !g_root ? -1 : 0;
  int same_path = g_path && strcmp(g_path, path) == 0;
  if (!force && g_root && same_path && same_file_version(&st, &g_stat)) return 0;

  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return force || !g_root || !same_path ? -1 : 0;
  struct stat fst;
  if (fstat(fd, &fst) != 0) {
    close(fd);
    return -1;
  }
  size_t size = (size_t)fst.st_size;
  char *text = malloc(size + 1);
  size_t got = 0;
  while (text && got < size) {
    ssize_t r = read(fd, text + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  jval *root = text ? jparse(text, got) : NULL;
  free(text);
  if (!root || root->type != J_OBJECT) {
    jfree(root);
    return force || !g_root || !same_path ? -1 : 0;
  }

  jfree(g_root);
  g_root = root;
  g_stat = fst;
  if (!same_path) {
    free(g_path);
    g_path = strdup(path);
  }
  free(g_grown);
  g_grown_len = gpu_count();
  g_grown = calloc(g_grown_len ? g_grown_len : 1, sizeof(int));
  return 0;
}

/* Writes g_root back to the state file atomically (temp file in the same dir + rename). */
static int write_state(void) {
  if (!g_path || !g_root) return -1;
  sbuf b = {0};
  jserialize(&b, g_root, 0);
  sb_put(&b, "\n", 1);
  if (b.oom) {
    free(b.buf);
    return -1;
  }
  size_t tmp_len = strlen(g_path) + 64;
  char *tmp = malloc(tmp_len);
  if (!tmp) {
    free(b.buf);
    return -1;
  }
  snprintf(tmp, tmp_len, "%s.fake-nvml-%ld.tmp", g_path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int ok = fd >= 0;
  size_t done = 0;
  while (ok && done < b.len) {
    ssize_t w = write(fd, b.buf + done, b.len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) ok = 0;
    else done += (size_t)w;
  }
  if (fd >= 0 && close(fd) != 0) ok = 0;
  if (ok && rename(tmp, g_path) != 0) ok = 0;
  if (!ok) unlink(tmp);
  free(tmp);
  free(b.buf);
  if (!ok) return -1;
  struct stat st;
  if (stat(g_path, &st) == 0) g_stat = st; /* our own write is not a change to re-read */
  return 0;
}

static void append_log(const char *uuid, unsigned int mw) {
  const char *path = getenv("FAKE_NVML_LOG");
  if (!path || !*path) return;
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  long long ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  char line[256];
  int n = snprintf(line, sizeof line, "%lld set %s %u\n", ms, uuid, mw);
  if (n > 0 && (size_t)n < sizeof line) {
    ssize_t ignored = write(fd, line, (size_t)n);
    (void)ignored;
  }
  close(fd);
}

/* Code injected through a "fail" map on obj for fn, or NVML_SUCCESS. */
static nvmlReturn_t injected(const jval *obj, const char *fn) {
  double code;
  if (jget_num(jget(obj, "fail"), fn, &code)) return (nvmlReturn_t)(int)code;
  return NVML_SUCCESS;
}

/* Common prologue of every function except nvmlInit_v2/nvmlShutdown. */
static nvmlReturn_t enter(const char *fn) {
  if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
  if (load_state(0) != 0) return NVML_ERROR_UNKNOWN;
  return injected(g_root, fn);
}

/*
 * Handles encode a magic tag, the GPU index and the MIG slot (0 = the GPU itself, k = MIG slot
 * k-1), so they are plain integers cast to pointers and MIG handles differ from parent handles.
 */
#define HANDLE_MAGIC 0x4E564D4C00000000ull /* "NVML" */

static nvmlDevice_t make_handle(size_t gpu, long mig_slot) {
  uint64_t h = HANDLE_MAGIC | ((uint64_t)(gpu + 1) << 16) | (uint64_t)(mig_slot + 1);
  return (nvmlDevice_t)(uintptr_t)h;
}

typedef struct {
  size_t gpu_index;
  long mig_slot; /* -1 for the physical GPU */
  jval *gpu;
  jval *obj; /* the GPU object, or the MIG device object */
} devref;

static int mig_on(const jval *gpu) { return jarray_len(jget(gpu, "migDevices")) > 0; }

static nvmlReturn_t decode_handle(nvmlDevice_t device, devref *d) {
  uint64_t h = (uint64_t)(uintptr_t)device;
  if ((h & 0xFFFFFFFF00000000ull) != HANDLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
  uint64_t gpu1 = (h >> 16) & 0xFFFF;
  uint64_t mig1 = h & 0xFFFF;
  if (gpu1 == 0) return NVML_ERROR_INVALID_ARGUMENT;
  d->gpu_index = (size_t)(gpu1 - 1);
  d->mig_slot = (long)mig1 - 1;
  d->gpu = gpu_at(d->gpu_index);
  if (!d->gpu) return NVML_ERROR_INVALID_ARGUMENT;
  d->obj = d->gpu;
  if (d->mig_slot >= 0) {
    jval *migs = jget(d->gpu, "migDevices");
    if ((size_t)d->mig_slot >= jarray_len(migs)) return NVML_ERROR_INVALID_ARGUMENT;
    d->obj = migs->items[d->mig_slot];
    if (d->obj->type != J_OBJECT) return NVML_ERROR_INVALID_ARGUMENT;
  }
  return NVML_SUCCESS;
}

static nvmlReturn_t enter_device(const char *fn, nvmlDevice_t device, devref *d) {
  nvmlReturn_t rc = enter(fn);
  if (rc != NVML_SUCCESS) return rc;
  rc = decode_handle(device, d);
  if (rc != NVML_SUCCESS) return rc;
  return injected(d->obj, fn);
}

static nvmlReturn_t copy_string(char *dst, unsigned int length, const char *src) {
  if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
  size_t need = strlen(src) + 1;
  if (need > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(dst, src, need);
  return NVML_SUCCESS;
}

/* Reads a required unsigned number field of the physical GPU (power functions). */
static nvmlReturn_t gpu_u32(const devref *d, const char *key, unsigned int *out) {
  if (!out) return NVML_ERROR_INVALID_ARGUMENT;
  if (d->mig_slot >= 0) return NVML_ERROR_NOT_SUPPORTED;
  double v;
  if (!jget_num(d->gpu, key, &v)) return NVML_ERROR_NOT_SUPPORTED;
  *out = to_u32(v);
  return NVML_SUCCESS;
}

#define LOCKED(call)                            \
  do {                                          \
    pthread_mutex_lock(&g_lock);                \
    nvmlReturn_t locked_rc_ = (call);           \
    pthread_mutex_unlock(&g_lock);              \
    return locked_rc_;                          \
  } while (0)

/* ---------------------------------------------------------------- implementations */

static nvmlReturn_t init_impl(void) {
  if (load_state(1) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
  nvmlReturn_t rc = injected(g_root, "nvmlInit_v2");
  if (rc != NVML_SUCCESS) return rc;
  g_init_count++;
  return NVML_SUCCESS;
}

static nvmlReturn_t shutdown_impl(void) {
  if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
  g_init_count--;
  return NVML_SUCCESS;
}

static nvmlReturn_t driver_version_impl(char *version, unsigned int length) {
  nvmlReturn_t rc = enter("nvmlSystemGetDriverVersion");
  if (rc != NVML_SUCCESS) return rc;
  return copy_string(version, length, jget_str(g_root, "driverVersion", "580.159.04"));
}

static nvmlReturn_t count_impl(unsigned int *count) {
  nvmlReturn_t rc = enter("nvmlDeviceGetCount_v2");
  if (rc != NVML_SUCCESS) return rc;
  if (!count) return NVML_ERROR_INVALID_ARGUMENT;
  *count = (unsigned int)gpu_count();
  return NVML_SUCCESS;
}

static nvmlReturn_t handle_by_index_impl(unsigned int index, nvmlDevice_t *device) {
  nvmlReturn_t rc = enter("nvmlDeviceGetHandleByIndex_v2");
  if (rc != NVML_SUCCESS) return rc;
  jval *gpu = gpu_at(index);
  if (!device || !gpu) return NVML_ERROR_INVALID_ARGUMENT;
  rc = injected(gpu, "nvmlDeviceGetHandleByIndex_v2");
  if (rc != NVML_SUCCESS) return rc;
  *device = make_handle(index, -1);
  return NVML_SUCCESS;
}

static nvmlReturn_t handle_by_uuid_impl(const char *uuid, nvmlDevice_t *device) {
  nvmlReturn_t rc = enter("nvmlDeviceGetHandleByUUID");
  if (rc != NVML_SUCCESS) return rc;
  if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
  size_t n = gpu_count();
  for (size_t i = 0; i < n; i++) {
    jval *gpu = gpu_at(i);
    if (!gpu) continue;
    if (strcmp(jget_str(gpu, "uuid", ""), uuid) == 0) {
      *device = make_handle(i, -1);
      return NVML_SUCCESS;
    }
    jval *migs = jget(gpu, "migDevices");
    for (size_t k = 0; k < jarray_len(migs); k++) {
      if (strcmp(jget_str(migs->items[k], "uuid", ""), uuid) == 0) {
        *device = make_handle(i, (long)k);
        return NVML_SUCCESS;
      }
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

static nvmlReturn_t uuid_impl(nvmlDevice_t device, char *uuid, unsigned int length) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetUUID", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  return copy_string(uuid, length, jget_str(d.obj, "uuid", ""));
}

static nvmlReturn_t name_impl(nvmlDevice_t device, char *name, unsigned int length) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetName", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  const char *parent = jget_str(d.gpu, "name", "NVIDIA Fake GPU");
  if (d.mig_slot < 0) return copy_string(name, length, parent);
  const char *own = jget_str(d.obj, "name", NULL);
  if (own) return copy_string(name, length, own);
  char buf[160];
  snprintf(buf, sizeof buf, "%s MIG", parent);
  return copy_string(name, length, buf);
}

static nvmlReturn_t pci_impl(nvmlDevice_t device, nvmlPciInfo_t *pci) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetPciInfo_v3", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
  memset(pci, 0, sizeof *pci);
  const char *bus_id = jget_str(d.gpu, "pciBusId", "00000000:00:00.0");
  unsigned int domain = 0, bus = 0, dev = 0, fn = 0;
  if (sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4) {
    domain = bus = dev = fn = 0;
  }
  snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.%x", domain & 0xFFFF, bus,
           dev, fn);
  snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
  pci->domain = domain;
  pci->bus = bus;
  pci->device = dev;
  pci->pciDeviceId = 0x233010DE;    /* H100 SXM5: device 0x2330, vendor 0x10DE */
  pci->pciSubSystemId = 0x16C110DE;
  return NVML_SUCCESS;
}

static nvmlReturn_t power_usage_impl(nvmlDevice_t device, unsigned int *power) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetPowerUsage", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  return gpu_u32(&d, "powerUsageMw", power);
}

static nvmlReturn_t limit_impl(nvmlDevice_t device, unsigned int *limit) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetPowerManagementLimit", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  return gpu_u32(&d, "limitMw", limit);
}

static nvmlReturn_t constraints_impl(nvmlDevice_t device, unsigned int *min, unsigned int *max) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetPowerManagementLimitConstraints", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!min || !max) return NVML_ERROR_INVALID_ARGUMENT;
  rc = gpu_u32(&d, "minLimitMw", min);
  if (rc != NVML_SUCCESS) return rc;
  return gpu_u32(&d, "maxLimitMw", max);
}

static nvmlReturn_t default_limit_impl(nvmlDevice_t device, unsigned int *limit) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetPowerManagementDefaultLimit", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  return gpu_u32(&d, "defaultLimitMw", limit);
}

static nvmlReturn_t enforced_impl(nvmlDevice_t device, unsigned int *limit) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetEnforcedPowerLimit", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  jval *explicit_limit = jget(d.gpu, "enforcedLimitMw");
  if (explicit_limit && d.mig_slot < 0) {
    if (explicit_limit->type != J_NUMBER || !limit) return NVML_ERROR_NOT_SUPPORTED;
    *limit = to_u32(explicit_limit->num);
    return NVML_SUCCESS;
  }
  return gpu_u32(&d, "limitMw", limit);
}

static nvmlReturn_t set_limit_impl(nvmlDevice_t device, unsigned int limit) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceSetPowerManagementLimit", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (d.mig_slot >= 0) return NVML_ERROR_NOT_SUPPORTED;
  unsigned int min, max;
  rc = gpu_u32(&d, "minLimitMw", &min);
  if (rc == NVML_SUCCESS) rc = gpu_u32(&d, "maxLimitMw", &max);
  if (rc != NVML_SUCCESS) return rc;
  if (limit < min || limit > max) return NVML_ERROR_INVALID_ARGUMENT;
  jval *node = jget(d.gpu, "limitMw");
  if (!node) {
    node = jnew(J_NUMBER);
    char *key = strdup("limitMw");
    if (!node || !key || jpush(d.gpu, key, node) != 0) {
      free(key);
      jfree(node);
      return NVML_ERROR_MEMORY;
    }
  }
  node->type = J_NUMBER;
  node->num = (double)limit;
  free(node->raw);
  node->raw = NULL;
  if (write_state() != 0) return NVML_ERROR_UNKNOWN;
  append_log(jget_str(d.gpu, "uuid", ""), limit);
  return NVML_SUCCESS;
}

static nvmlReturn_t energy_impl(nvmlDevice_t device, unsigned long long *energy) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetTotalEnergyConsumption", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
  if (d.mig_slot >= 0) return NVML_ERROR_NOT_SUPPORTED;
  double v;
  if (!jget_num(d.gpu, "energyMj", &v)) return NVML_ERROR_NOT_SUPPORTED;
  *energy = v > 0 ? (unsigned long long)v : 0;
  return NVML_SUCCESS;
}

/* Shared by the three process-list versions; version 1 fills nvmlProcessInfo_v1_t. */
static nvmlReturn_t processes_impl(const char *fn, nvmlDevice_t device, unsigned int *count,
                                   void *infos, int version) {
  devref d;
  nvmlReturn_t rc = enter_device(fn, device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!count) return NVML_ERROR_INVALID_ARGUMENT;
  jval *list = jget(d.obj, "processes");
  size_t listed = jarray_len(list);
  int is_parent = d.mig_slot < 0;
  double grow = 0;
  if (is_parent) jget_num(d.gpu, "growProcessesOnSecondCall", &grow);
  size_t grown = is_parent && d.gpu_index < g_grown_len && g_grown[d.gpu_index] ? (size_t)grow : 0;
  size_t total = listed + grown;
  jval *always = is_parent ? jget(d.gpu, "processesAlwaysInsufficient") : NULL;
  if (always && always->type == J_TRUE && total > 0) {
    *count = (*count > total ? *count : (unsigned int)total) + 1;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  if (*count < total) {
    *count = (unsigned int)total;
    if (is_parent && grow > 0 && d.gpu_index < g_grown_len) g_grown[d.gpu_index] = 1;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  if (total > 0 && !infos) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned int gi = is_parent ? 0xFFFFFFFFu : (unsigned int)d.mig_slot + 1;
  unsigned int ci = is_parent ? 0xFFFFFFFFu : 0;
  for (size_t i = 0; i < total; i++) {
    unsigned int pid;
    unsigned long long mem = 0;
    if (i < listed) {
      double v;
      pid = jget_num(list->items[i], "pid", &v) ? to_u32(v) : 0;
      if (jget_num(list->items[i], "usedGpuMemory", &v)) mem = v > 0 ? (unsigned long long)v : 0;
    } else {
      pid = 90000u + (unsigned int)(i - listed);
    }
    if (version == 1) {
      nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + i;
      out->pid = pid;
      out->usedGpuMemory = mem;
    } else {
      nvmlProcessInfo_v2_t *out = (nvmlProcessInfo_v2_t *)infos + i;
      out->pid = pid;
      out->usedGpuMemory = mem;
      out->gpuInstanceId = gi;
      out->computeInstanceId = ci;
    }
  }
  *count = (unsigned int)total;
  return NVML_SUCCESS;
}

MAYBE_UNUSED static nvmlReturn_t mig_mode_impl(nvmlDevice_t device, unsigned int *current,
                                  unsigned int *pending) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetMigMode", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
  if (d.mig_slot >= 0) return NVML_ERROR_NOT_SUPPORTED;
  *current = *pending = mig_on(d.gpu) ? 1 : 0;
  return NVML_SUCCESS;
}

static unsigned int max_mig_count(const jval *gpu) {
  size_t n = jarray_len(jget(gpu, "migDevices"));
  if (n == 0) return 0;
  return n > 7 ? (unsigned int)n : 7;
}

MAYBE_UNUSED static nvmlReturn_t max_mig_impl(nvmlDevice_t device, unsigned int *count) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetMaxMigDeviceCount", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!count) return NVML_ERROR_INVALID_ARGUMENT;
  if (d.mig_slot >= 0) return NVML_ERROR_NOT_SUPPORTED;
  *count = max_mig_count(d.gpu);
  return NVML_SUCCESS;
}

MAYBE_UNUSED static nvmlReturn_t mig_handle_impl(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetMigDeviceHandleByIndex", device, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!mig || d.mig_slot >= 0 || index >= max_mig_count(d.gpu)) return NVML_ERROR_INVALID_ARGUMENT;
  jval *migs = jget(d.gpu, "migDevices");
  if (index >= jarray_len(migs) || migs->items[index]->type != J_OBJECT) {
    return NVML_ERROR_NOT_FOUND;
  }
  *mig = make_handle(d.gpu_index, (long)index);
  return NVML_SUCCESS;
}

MAYBE_UNUSED static nvmlReturn_t parent_impl(nvmlDevice_t mig, nvmlDevice_t *device) {
  devref d;
  nvmlReturn_t rc = enter_device("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", mig, &d);
  if (rc != NVML_SUCCESS) return rc;
  if (!device || d.mig_slot < 0) return NVML_ERROR_INVALID_ARGUMENT;
  *device = make_handle(d.gpu_index, -1);
  return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- exported NVML API */

EXPORT nvmlReturn_t nvmlInit_v2(void) { LOCKED(init_impl()); }

EXPORT nvmlReturn_t nvmlShutdown(void) { LOCKED(shutdown_impl()); }

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
  LOCKED(driver_version_impl(version, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
  LOCKED(count_impl(deviceCount));
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
  LOCKED(handle_by_index_impl(index, device));
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
  LOCKED(handle_by_uuid_impl(uuid, device));
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
  LOCKED(uuid_impl(device, uuid, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
  LOCKED(name_impl(device, name, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
  LOCKED(pci_impl(device, pci));
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
  LOCKED(power_usage_impl(device, power));
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
  LOCKED(limit_impl(device, limit));
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device,
                                                                 unsigned int *minLimit,
                                                                 unsigned int *maxLimit) {
  LOCKED(constraints_impl(device, minLimit, maxLimit));
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device,
                                                             unsigned int *defaultLimit) {
  LOCKED(default_limit_impl(device, defaultLimit));
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
  LOCKED(enforced_impl(device, limit));
}

EXPORT nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t device, unsigned int limit) {
  LOCKED(set_limit_impl(device, limit));
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                        unsigned long long *energy) {
  LOCKED(energy_impl(device, energy));
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                         unsigned int *infoCount,
                                                         nvmlProcessInfo_v1_t *infos) {
  LOCKED(processes_impl("nvmlDeviceGetComputeRunningProcesses", device, infoCount, infos, 1));
}

#ifndef FAKE_NVML_V1_ONLY
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_v2_t *infos) {
  LOCKED(processes_impl("nvmlDeviceGetComputeRunningProcesses_v2", device, infoCount, infos, 2));
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos) {
  LOCKED(processes_impl("nvmlDeviceGetComputeRunningProcesses_v3", device, infoCount, infos, 3));
}
#endif

#ifndef FAKE_NVML_NO_MIG
EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                         unsigned int *pendingMode) {
  LOCKED(mig_mode_impl(device, currentMode, pendingMode));
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
  LOCKED(max_mig_impl(device, count));
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *migDevice) {
  LOCKED(mig_handle_impl(device, index, migDevice));
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
                                                                 nvmlDevice_t *device) {
  LOCKED(parent_impl(migDevice, device));
}
#endif
