/* The command line's commands and options, as data: ONE table from which the option parsers
 * (getopt_long arrays), every `--help` text, the manual page and the bash completion are made
 * (the last two by modelshrink-gendoc, src/cli/gendoc.c, at build time), so they cannot drift
 * apart. Built on nothing but the C library. */
#ifndef MSH_CLI_USAGE_H
#define MSH_CLI_USAGE_H

#include <getopt.h>
#include <stddef.h>
#include <stdio.h>

/* getopt_long's value for each option: its short letter when it has one, else a code >= 256. */
enum msh_cli_opt_id {
    OPT_HELP = 'h',
    OPT_JOBS = 'j',
    OPT_OUTPUT = 'o',
    OPT_QUIET = 'q',
    OPT_VERSION = 256,
    OPT_JSON,
    OPT_ALL,
    OPT_NO_DEDUP,
    OPT_DEDUP_GRAPH_INPUTS,
    OPT_EXTERNAL_DATA,
    OPT_FP16,
    OPT_BF16,
    OPT_STORAGE_ONLY,
    OPT_KEEP_FP32,
    OPT_FP16_CLAMP,
    OPT_ALLOW_LARGER,
    OPT_FP16_MIN,
    OPT_FP16_MAX,
    OPT_KEEP_IO_TYPES,
    OPT_NO_KEEP_IO_TYPES,
    OPT_BLOCK_OP,
    OPT_BLOCK_NODE,
    OPT_INT8,
    OPT_INT8_MIN_ELEMENTS,
    OPT_INT8_GATHER,
    OPT_INT4,
    OPT_INT4_BLOCK,
    OPT_INT4_ASYM,
    OPT_INT4_MIN_ELEMENTS,
    OPT_INT4_GATHER,
    OPT_INT4_FORMAT,
    OPT_INT4_SEARCH,
    OPT_KEEP_OUTPUTS,
    OPT_DROP_OUTPUTS,
    OPT_KEEP_INPUTS,
    OPT_DEVICE,
    OPT_VERIFY,
    OPT_STAGING_MIB,
    OPT_STRIP,
    OPT_KEY,
    OPT_FORMAT,
    OPT_MAX_SHARD_SIZE,
    OPT_REPORT,
    OPT_RESUME,
    OPT_SHARD,
    OPT_SHARD_COUNT,
    OPT_COPY_OTHERS,
    OPT_HTML,
    OPT_NO_SAVINGS
};

/* A command. `name` is "" for the program itself and "report merge" for a sub-command; a group
 * ("report") has sub-commands and does nothing itself. */
typedef struct msh_cli_command {
    const char *name;
    const char *synopsis; /* what follows the name in the usage line */
    const char *summary;  /* one line, for the list of commands */
    const char *about;    /* a paragraph under the usage line, or NULL */
    const char *exits;    /* the exit codes, one sentence */
    int group;            /* 1: a group of sub-commands ("report") */
} msh_cli_command;

typedef enum { MSH_CLI_ROW_OPTION, MSH_CLI_ROW_HEADING, MSH_CLI_ROW_TEXT } msh_cli_row_kind;

/* A row of a command's help, in the order printed: an option, a heading that starts a group of
 * options, or a paragraph under a heading. Texts are single paragraphs, wrapped when printed. */
typedef struct msh_cli_row {
    const char *cmd; /* msh_cli_command.name */
    msh_cli_row_kind kind;
    int id;           /* options: an enum msh_cli_opt_id value */
    char short_name;  /* options: 'o' for -o, or 0 */
    const char *name; /* options: the long name without "--" */
    const char *arg;  /* options: the argument's name ("PATH"), or NULL for a flag */
    const char *text; /* what the option does; a heading's title; a paragraph */
    /* For shell completion (modelshrink-gendoc): */
    int arg_is_path;    /* options: 1 when the argument names a file or folder */
    const char *values; /* options: the words the argument takes ("auto cpu cuda"), or NULL */
} msh_cli_row;

/* The tables (static, read-only). */
const msh_cli_command *msh_cli_commands(size_t *n);
const msh_cli_row *msh_cli_rows(size_t *n);

/* The command named `name` ("" for the program), or NULL. */
const msh_cli_command *msh_cli_command_find(const char *name);

/* Print the usage of command `name` ("" for the program: the list of commands) to `f`. */
void msh_cli_usage(FILE *f, const char *name);

/* getopt_long's arrays for command `name`: `longopts` (terminated by a zero entry) and
 * `shortopts` (starting with ':', so that a missing argument is told from an unknown option).
 * 0 when the buffers are too small. */
int msh_cli_getopt(const char *name, struct option *longopts, size_t cap, char *shortopts,
                   size_t scap);

#endif
