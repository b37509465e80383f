/* Batch runs of `convert`: parallel workers, a JSON Lines report, --resume, shards, progress and
 * clean stops on SIGINT/SIGTERM. Built on the public API only. */
#ifndef MSH_CLI_BATCH_H
#define MSH_CLI_BATCH_H

#include <stdint.h>

#include "modelshrink.h"

typedef struct msh_cli_job {
    char *in;
    char *out;
    char *rel; /* relative to its input root: the key for shards, reports and resume */
    int model; /* 0: not a model (copied with --copy-others, else noted) */
    int64_t size;
    int64_t mtime_ns;
    int explicit;       /* named on the command line (not found in a folder) */
    int folder;         /* a Hugging Face model folder */
    unsigned skip;      /* bit o: option o was given but does not apply to this model's format */
    int64_t data_bytes; /* its external data files (ONNX), for the progress bar's total */
    char *opts;         /* the options that change its output, canonical (see batch.c) */
    int reconvert;      /* --resume: done before, but with other options */
} msh_cli_job;

typedef struct msh_cli_batch {
    msh_cli_job *v;
    size_t n, cap;
    const msh_convert_options *opt;
    const char *output_root; /* the output folder (or the output file's folder) */
    int jobs;
    int resume;
    const char *report;
    int quiet;
    int copy_others;
    int shard_k, shard_n;     /* shard_n == 0: no sharding */
    const char *const *flags; /* flags[o]: the flag that set msh_option o, or NULL */
} msh_cli_batch;

/* Add a job (strings copied). 0 when out of memory. */
int msh_cli_batch_add(msh_cli_batch *b, const char *in, const char *out, const char *rel,
                      int model);
/* Free the jobs (when the batch is not run). */
void msh_cli_batch_free(msh_cli_batch *b);
/* Run the batch; returns the process exit code (0, 1, 130 or 143). Frees the jobs. */
int msh_cli_batch_run(msh_cli_batch *b);
/* Printed per model when output is not a terminal (and after single conversions); `skipped`
 * lists the given options that did not apply to this model ("" when none). Byte counts are in
 * inspect's units (msh_cli_human_bytes); the report has them exact. */
void msh_cli_print_line(const char *in, const char *out, const msh_convert_options *opt,
                        const msh_convert_result *r, const char *skipped);
/* Reset option `o` of `opt` to its default. */
void msh_cli_clear_option(msh_convert_options *opt, msh_option o);
/* `modelshrink report merge REPORT... [-o OUT]`: the exit code. */
int msh_cli_report_merge(int argc, char **argv);

#endif
