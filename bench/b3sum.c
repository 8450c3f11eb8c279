/* A minimal `b3sum FILE...` for the benchmark's hash floor, when the Rust b3sum is absent.
 *
 * Built against the official BLAKE3 C implementation (https://github.com/BLAKE3-team/BLAKE3,
 * folder c/), with its SIMD back ends; in that folder:
 *
 *   gcc -O3 -o /tmp/bench_trees/b3sum /path/to/bench/b3sum.c blake3.c blake3_dispatch.c \
 *       blake3_portable.c blake3_sse2_x86-64_unix.S blake3_sse41_x86-64_unix.S \
 *       blake3_avx2_x86-64_unix.S blake3_avx512_x86-64_unix.S -I.
 *
 * bench/run.py uses b3sum from PATH, else /tmp/bench_trees/b3sum. For each file: open,
 * read(2) in 64 KiB blocks, hash, print "<hex>  <path>" like b3sum. Single-threaded, as
 * b3sum is for small files.
 */
#include "blake3.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  static unsigned char buf[65536];
  int status = 0;
  for (int i = 1; i < argc; i++) {
    int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fprintf(stderr, "b3sum: %s: %s\n", argv[i], strerror(errno));
      status = 1;
      continue;
    }
    blake3_hasher hasher;
    blake3_hasher_init(&hasher);
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
      blake3_hasher_update(&hasher, buf, (size_t)n);
    }
    close(fd);
    if (n < 0) {
      fprintf(stderr, "b3sum: %s: %s\n", argv[i], strerror(errno));
      status = 1;
      continue;
    }
    uint8_t out[BLAKE3_OUT_LEN];
    blake3_hasher_finalize(&hasher, out, BLAKE3_OUT_LEN);
    for (size_t k = 0; k < BLAKE3_OUT_LEN; k++) {
      printf("%02x", out[k]);
    }
    printf("  %s\n", argv[i]);
  }
  return status;
}
