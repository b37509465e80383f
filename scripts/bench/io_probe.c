/* io_probe: how the engine should read and write, measured rather than guessed (issue 14).
 *
 *   io_probe IN OUT MODE THREADS PIECE_KIB KICK
 *
 * Converts the FP32 bytes of IN to FP16 into OUT (the engine's element function), with THREADS
 * threads each taking PIECE_KIB pieces, and fsyncs OUT at the end, as modelshrink does.
 * MODE: pread (each piece read into a buffer), mmap (the whole input mapped once), mmapw (each
 * piece mapped with MAP_POPULATE and unmapped after use). KICK 1 starts the write-back of each
 * piece written (sync_file_range), so the final fsync overlaps the work. Prints one line:
 * "MODE THREADS PIECE KICK SECONDS". Built and run by the io-probe benchmark case. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels/msh_cpu.h"

static int in_fd, out_fd, kick;
static int64_t size;
static size_t piece;
static const char *mode;
static const uint8_t *whole;
static int64_t next;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static msh_f16_bounds bounds;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *worker(void *arg) {
    (void)arg;
    uint8_t *in = malloc(piece), *out = malloc(piece / 2);
    for (;;) {
        pthread_mutex_lock(&mu);
        int64_t off = next;
        next += (int64_t)piece;
        pthread_mutex_unlock(&mu);
        if (off >= size)
            break;
        size_t n = size - off < (int64_t)piece ? (size_t)(size - off) : piece;
        n &= ~(size_t)3;
        const uint8_t *src = in;
        void *map = NULL;
        if (strcmp(mode, "pread") == 0) {
            if (pread(in_fd, in, n, off) != (ssize_t)n)
                abort();
        } else if (strcmp(mode, "mmap") == 0) {
            src = whole + off;
        } else {
            map = mmap(NULL, n, PROT_READ, MAP_SHARED | MAP_POPULATE, in_fd, off);
            if (map == MAP_FAILED)
                abort();
            src = map;
        }
        msh_f32_to_f16_buf(src, out, n / 4, &bounds);
        if (map)
            munmap(map, n);
        if (pwrite(out_fd, out, n / 2, off / 2) != (ssize_t)(n / 2))
            abort();
        if (kick)
            sync_file_range(out_fd, off / 2, (off_t)(n / 2), SYNC_FILE_RANGE_WRITE);
    }
    free(in);
    free(out);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: io_probe IN OUT pread|mmap|mmapw THREADS PIECE_KIB KICK\n");
        return 2;
    }
    mode = argv[3];
    int threads = atoi(argv[4]);
    piece = (size_t)atoi(argv[5]) << 10;
    kick = atoi(argv[6]);
    msh_f16_bounds_default(&bounds);
    in_fd = open(argv[1], O_RDONLY);
    struct stat sb;
    if (in_fd < 0 || fstat(in_fd, &sb) != 0)
        return 1;
    size = (int64_t)sb.st_size;
    double t0 = now();
    out_fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (strcmp(mode, "mmap") == 0) {
        whole = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, in_fd, 0);
        if (whole == MAP_FAILED)
            return 1;
    }
    pthread_t th[64];
    for (int i = 0; i < threads && i < 64; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < threads && i < 64; i++)
        pthread_join(th[i], NULL);
    fsync(out_fd);
    close(out_fd);
    printf("%s %d %zu %d %.4f\n", mode, threads, piece >> 10, kick, now() - t0);
    return 0;
}
