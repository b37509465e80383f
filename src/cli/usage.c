/* The command line's commands and options (usage.h): the tables, the help printer and the
 * getopt_long arrays made from them. A new option is one row here plus its case in main.c. */
#include "usage.h"

#include <string.h>

#define WIDTH 80   /* help lines are shorter than this */
#define OPT_COL 26 /* where an option's text starts */

static const msh_cli_command commands[] = {
    {"", "COMMAND [ARGS...]", NULL,
     "Shrink neural-network model files (ONNX models, PyTorch checkpoints, safetensors files, "
     "Hugging Face model folders) without breaking them, explain their size, and compare them.",
     "exit codes: 0 success, 1 a failure (an input that could not be converted or read, files "
     "that differ), 2 usage error",
     0},
    {"convert", "[OPTIONS] INPUT... -o OUTPUT",
     "shrink models (files, Hugging Face model folders, or folders of models)",
     "With one input file, OUTPUT is the output file; when OUTPUT is an existing folder (or ends "
     "in '/'), the output is OUTPUT/<input name>, named as in a folder. With one Hugging Face "
     "model folder, OUTPUT is the output model folder. With several inputs or an input folder, "
     "OUTPUT is a folder below which the inputs' relative paths are mirrored. Nothing is created "
     "at OUTPUT before a model is written: a run whose models all fail leaves no new folder.",
     "exit codes: 0 every input converted, 1 at least one input failed (each is named on "
     "stderr; the others still ran), 2 usage error (nothing written)",
     0},
    {"inspect", "[--json] FILE... | --html OUT [--no-savings] FILE", "explain a model's size",
     "Explain the size of each model file: tensor bytes by element type, graph and metadata "
     "overhead, the duplicates that convert would merge, what its clean-up would remove, and "
     "the largest tensors. With --html, one file is shown as a self-contained HTML page "
     "instead: a treemap of its bytes by module path, coloured by role, the size breakdown, "
     "the duplicates, the largest tensors, and what each conversion would save, measured by "
     "running each conversion once into a temporary folder beside OUT.",
     "exit codes: 0 every file inspected (and the page written), 1 a file that cannot be read "
     "or a page that cannot be written, 2 usage error",
     0},
    {"diff", "[--json] [--all] A B", "compare two model files tensor by tensor",
     "Compare two model files tensor by tensor, whatever their formats (an ONNX model and its "
     "safetensors export, a checkpoint and its strip, a GPU conversion and a CPU one). Tensors "
     "are matched by name. For each: bytes identical or not; otherwise the largest absolute and "
     "relative difference, the largest ULP distance (same float type) and the cosine; names in "
     "one file only; element type and shape changes. Prints the tensors that differ and a "
     "summary line.",
     "exit codes: 0 every tensor byte-identical, 1 a difference (or a file that cannot be read), "
     "2 usage error",
     0},
    {"report", "COMMAND [ARGS...]", "work with batch reports (convert --report)", NULL,
     "exit codes: those of the command", 1},
    {"report merge", "REPORT... [-o OUT]", "combine shard reports into one, with totals",
     "Combine the JSON Lines reports of a sharded batch (convert --report, one per shard) into "
     "one: the last record of each model wins, then a summary record with the totals. A summary "
     "line goes to stderr.",
     "exit codes: 0 every model in the reports converted, 1 a model failed or OUT cannot be "
     "written, 2 usage error or a report that cannot be read",
     0},
    {"report html", "REPORT... -o OUT", "a self-contained HTML page of batch reports",
     "Write one HTML page of the JSON Lines reports of a batch (convert --report; the reports "
     "of several shards, or their merge): totals, savings by pass, a table per format, a "
     "histogram of ratios, the failures with their messages, and a table of the models, sorted "
     "by ratio (with scripts on, by any column). The last record of each model wins, as in "
     "report merge. The page loads nothing and reads the same without scripts.",
     "exit codes: 0 the page was written, 1 OUT cannot be written, 2 usage error or a report "
     "that cannot be read",
     0},
    {"help", "[COMMAND]", "print a command's usage and options", NULL,
     "exit codes: 0, or 2 for an unknown command", 0},
};

/* OPTF: the argument is a file or folder name; OPTV: the argument is one of `values`. */
#define OPT(cmd, id, s, name, arg, text)                                                           \
    { cmd, MSH_CLI_ROW_OPTION, id, s, name, arg, text, 0, NULL }
#define OPTF(cmd, id, s, name, arg, text)                                                          \
    { cmd, MSH_CLI_ROW_OPTION, id, s, name, arg, text, 1, NULL }
#define OPTV(cmd, id, s, name, arg, values, text)                                                  \
    { cmd, MSH_CLI_ROW_OPTION, id, s, name, arg, text, 0, values }
#define HEADING(cmd, title)                                                                        \
    { cmd, MSH_CLI_ROW_HEADING, 0, 0, NULL, NULL, title, 0, NULL }
#define TEXT(cmd, text)                                                                            \
    { cmd, MSH_CLI_ROW_TEXT, 0, 0, NULL, NULL, text, 0, NULL }

static const msh_cli_row rows[] = {
    OPT("", OPT_HELP, 'h', "help", NULL, "print this text"),
    OPT("", OPT_VERSION, 0, "version", NULL, "print the version"),

    OPTF("convert", OPT_OUTPUT, 'o', "output", "PATH",
         "the output file (one input file: its extension .onnx, .safetensors or .pth/.pt/.bin "
         "decides the format), model folder (one Hugging Face model folder) or folder"),
    OPT("convert", OPT_NO_DEDUP, 0, "no-dedup", NULL,
        "do not merge identical tensors; the rest still runs (ONNX: the clean-up below; "
        "checkpoints: the strip to the state dict), so the output can still differ from the "
        "input"),
    OPT("convert", OPT_DEDUP_GRAPH_INPUTS, 0, "dedup-graph-inputs", NULL,
        "also merge initializers that are graph inputs (not with --no-dedup)"),
    OPT("convert", OPT_EXTERNAL_DATA, 0, "external-data", NULL,
        "write tensors to <output>.data (4096-byte aligned)"),
    OPT("convert", OPT_QUIET, 'q', "quiet", NULL,
        "errors and warnings only: no per-model lines, progress bar, summary table or notes of "
        "files that are not models"),
    OPT("convert", OPT_HELP, 'h', "help", NULL, "print this text"),

    HEADING("convert", "FP16 and BF16"),
    TEXT("convert", "The other options of this group need --fp16 or --bf16 (those marked FP16: "
                    "--fp16). --keep-io-types, --no-keep-io-types, --block-op and --block-node "
                    "choose what computes in FP32, so they do not go with --storage-only."),
    OPT("convert", OPT_FP16, 0, "fp16", NULL,
        "convert FP32 tensors and the ops that allow it to FP16"),
    OPT("convert", OPT_BF16, 0, "bf16", NULL, "the same, to BF16"),
    OPT("convert", OPT_STORAGE_ONLY, 0, "storage-only", NULL,
        "store weights in the half type, widen them to FP32 once (Cast) and compute in FP32 "
        "(runs on any CPU)"),
    OPT("convert", OPT_KEEP_FP32, 0, "keep-fp32", "GLOB",
        "keep matching tensors (names, checkpoint keys) and the ops that read them in FP32 "
        "(repeatable)"),
    OPT("convert", OPT_FP16_CLAMP, 0, "fp16-clamp", NULL,
        "FP16: clamp tensors FP16 cannot hold (|x| > 65504, or mostly below 2^-14) instead of "
        "keeping them FP32 (the default)"),
    OPT("convert", OPT_ALLOW_LARGER, 0, "allow-larger", NULL,
        "keep the conversion even when its Casts make the file larger (for half-precision "
        "compute); by default it is left out"),
    OPT("convert", OPT_FP16_MIN, 0, "fp16-min", "X",
        "FP16: non-zero magnitudes below X become X (default 2^-24)"),
    OPT("convert", OPT_FP16_MAX, 0, "fp16-max", "X",
        "FP16: finite magnitudes above X become X (default 65504)"),
    OPT("convert", OPT_KEEP_IO_TYPES, 0, "keep-io-types", NULL,
        "keep FP32 graph inputs and outputs (default)"),
    OPT("convert", OPT_NO_KEEP_IO_TYPES, 0, "no-keep-io-types", NULL,
        "make FP32 graph inputs and outputs FP16/BF16 too"),
    OPT("convert", OPT_BLOCK_OP, 0, "block-op", "OP[,OP]",
        "keep these op types in FP32 (repeatable); each must be an op type of an ONNX schema: "
        "nodes of custom domains always stay FP32"),
    OPT("convert", OPT_BLOCK_NODE, 0, "block-node", "N[,N]",
        "keep these nodes (by name) in FP32 (repeatable)"),

    HEADING("convert", "INT8"),
    OPT("convert", OPT_INT8, 0, "int8", NULL,
        "quantize MatMul/Gemm/Conv/ConvTranspose/LSTM/GRU/RNN weights to INT8 (per output "
        "channel, DequantizeLinear)"),
    OPT("convert", OPT_INT8_MIN_ELEMENTS, 0, "int8-min-elements", "N",
        "with --int8: the smallest weight quantized (default 4096)"),
    OPT("convert", OPT_INT8_GATHER, 0, "int8-gather", NULL,
        "with --int8: also quantize embedding tables feeding Gather"),

    HEADING("convert", "INT4"),
    OPT("convert", OPT_INT4, 0, "int4", NULL,
        "store MatMul/Gemm weights in 4 bits, blockwise along the reduction axis (RTN; excludes "
        "--int8)"),
    OPT("convert", OPT_INT4_BLOCK, 0, "int4-block", "N",
        "with --int4: values per block, 32 (default), 64 or 128"),
    OPT("convert", OPT_INT4_ASYM, 0, "int4-asym", NULL,
        "with --int4: UINT4 with a zero point per block (default: symmetric INT4)"),
    OPT("convert", OPT_INT4_MIN_ELEMENTS, 0, "int4-min-elements", "N",
        "with --int4: the smallest weight quantized (default 4096)"),
    OPT("convert", OPT_INT4_GATHER, 0, "int4-gather", NULL,
        "with --int4: also Gather tables (matmulnbits: as GatherBlockQuantized)"),
    OPT("convert", OPT_INT4_FORMAT, 0, "int4-format", "F",
        "with --int4: qdq (default: DequantizeLinear-21 with block_size, opset raised to 21) or "
        "matmulnbits (onnxruntime's com.microsoft.MatMulNBits)"),
    OPT("convert", OPT_INT4_SEARCH, 0, "int4-search", NULL,
        "with --int4: per block, the scale of 20 clipping ratios (1 .. 0.81) with the least "
        "squared error (never more than RTN's)"),

    HEADING("convert", "Keeping a sub-model (ONNX)"),
    TEXT("convert", "ONNX models are always cleaned up: unread nodes and initializers, value_info "
                    "of removed values and opset imports of unused domains are removed. Beyond "
                    "that:"),
    OPT("convert", OPT_KEEP_OUTPUTS, 0, "keep-outputs", "N[,N]",
        "keep only these graph outputs and what they need (repeatable)"),
    OPT("convert", OPT_DROP_OUTPUTS, 0, "drop-outputs", "N[,N]",
        "remove these graph outputs and what only they need (repeatable)"),
    OPT("convert", OPT_KEEP_INPUTS, 0, "keep-inputs", NULL,
        "with --keep-outputs or --drop-outputs: keep graph inputs that the kept outputs no "
        "longer read"),

    HEADING("convert", "GPU"),
    OPTV("convert", OPT_DEVICE, 0, "device", "D", "auto cpu cuda",
         "auto (default: the GPU when present and the model >= 64 MiB), cpu or cuda"),
    OPT("convert", OPT_VERIFY, 0, "verify", NULL,
        "run GPU and CPU on every piece and compare the bytes (without a GPU, or with "
        "--device cpu, it warns: there is nothing to compare)"),
    OPT("convert", OPT_STAGING_MIB, 0, "staging-mib", "N",
        "GPU pinned staging buffer size (default 64; two are used)"),

    HEADING("convert", "PyTorch checkpoints and safetensors files"),
    TEXT("convert", "Checkpoints (.pth, .pt, .ckpt; torch >= 1.6 zip format, legacy and "
                    "TorchScript) are stripped to their state dict."),
    OPT("convert", OPT_STRIP, 0, "strip", NULL,
        "keep only the state dict (the default for checkpoints)"),
    OPT("convert", OPT_KEY, 0, "key", "NAME",
        "the state dict's key (default: model_state_dict, state_dict, model, module, net, "
        "network; or a bare state dict)"),
    OPTV("convert", OPT_FORMAT, 0, "format", "F", "safetensors pth",
         "safetensors (default) or pth (a weights-only .pth)"),

    HEADING("convert", "Hugging Face model folders"),
    TEXT("convert", "A folder holding pytorch_model.bin, model.safetensors, or their shards with "
                    "an index is converted as one model into a folder of safetensors shards plus "
                    "an index; its other files (config.json, tokenizer files, ...) are copied."),
    OPT("convert", OPT_MAX_SHARD_SIZE, 0, "max-shard-size", "S",
        "the largest shard: bytes, or a number with KB, MB, GB, TB (powers of 1000) or KiB, "
        "MiB, GiB, TiB (default 5GB)"),

    HEADING("convert", "Batches (several inputs or folders)"),
    OPT("convert", OPT_JOBS, 'j', "jobs", "N", "models at once (default: the number of cores)"),
    OPTF("convert", OPT_REPORT, 0, "report", "FILE",
         "JSON Lines: one record per model, then a summary"),
    OPT("convert", OPT_RESUME, 0, "resume", NULL,
        "with --report: skip models the report says are done (same size, time and output "
        "options; a model done with other options is converted again)"),
    OPT("convert", OPT_SHARD, 0, "shard", "K/N",
        "only this share of the inputs (by relative path); default from SLURM_ARRAY_TASK_ID and "
        "SLURM_ARRAY_TASK_COUNT (a Slurm job array)"),
    OPT("convert", OPT_SHARD_COUNT, 0, "shard-count", "N",
        "N shards, this one JOB_COMPLETION_INDEX (a Kubernetes Indexed Job; not with --shard)"),
    OPT("convert", OPT_COPY_OTHERS, 0, "copy-others", NULL,
        "copy the files of input folders that are not models into the output tree"),

    OPT("inspect", OPT_JSON, 0, "json", NULL,
        "print one JSON object (its schema is in README.md, \"inspect --json\")"),
    OPTF("inspect", OPT_HTML, 0, "html", "OUT",
         "write a self-contained HTML page about FILE to OUT (one file; not with --json)"),
    OPT("inspect", OPT_NO_SAVINGS, 0, "no-savings", NULL,
        "with --html: leave out what each conversion would save (which converts FILE once per "
        "conversion shown)"),
    OPT("inspect", OPT_HELP, 'h', "help", NULL, "print this text"),

    OPT("diff", OPT_JSON, 0, "json", NULL, "print the whole report as JSON"),
    OPT("diff", OPT_ALL, 0, "all", NULL,
        "list every tensor, the identical ones too (not with --json, which lists them all)"),
    OPT("diff", OPT_HELP, 'h', "help", NULL, "print this text"),

    OPT("report", OPT_HELP, 'h', "help", NULL, "print this text"),

    OPTF("report merge", OPT_OUTPUT, 'o', "output", "OUT",
         "write the merged report to OUT (default: stdout)"),
    OPT("report merge", OPT_HELP, 'h', "help", NULL, "print this text"),

    OPTF("report html", OPT_OUTPUT, 'o', "output", "OUT", "the page to write (required)"),
    OPT("report html", OPT_HELP, 'h', "help", NULL, "print this text"),
};

const msh_cli_command *msh_cli_commands(size_t *n) {
    *n = sizeof commands / sizeof commands[0];
    return commands;
}

const msh_cli_row *msh_cli_rows(size_t *n) {
    *n = sizeof rows / sizeof rows[0];
    return rows;
}

const msh_cli_command *msh_cli_command_find(const char *name) {
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Print `text` from column `col`, wrapped before WIDTH, continuation lines at `indent`. */
static void wrap(FILE *f, const char *text, size_t col, size_t indent) {
    const char *p = text;
    int first = 1;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t w = strcspn(p, " ");
        if (w == 0)
            break;
        if (!first && col + 1 + w >= WIDTH) {
            fprintf(f, "\n%*s", (int)indent, "");
            col = indent;
        } else if (!first) {
            fputc(' ', f);
            col++;
        }
        fwrite(p, 1, w, f);
        col += w;
        p += w;
        first = 0;
    }
    fputc('\n', f);
}

static void print_option(FILE *f, const msh_cli_row *r) {
    char left[96];
    if (r->short_name)
        snprintf(left, sizeof left, "  -%c, --%s%s%s", r->short_name, r->name, r->arg ? " " : "",
                 r->arg ? r->arg : "");
    else
        snprintf(left, sizeof left, "      --%s%s%s", r->name, r->arg ? " " : "",
                 r->arg ? r->arg : "");
    size_t n = strlen(left);
    fputs(left, f);
    if (n + 2 > OPT_COL) /* a long option: its text on the next line */
        fprintf(f, "\n%*s", OPT_COL, "");
    else
        fprintf(f, "%*s", (int)(OPT_COL - n), "");
    wrap(f, r->text, OPT_COL, OPT_COL);
}

/* The sub-commands of group `name` ("report" has "report merge"), as "  merge  summary". */
static void print_commands(FILE *f, const char *group) {
    size_t glen = strlen(group), width = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
            const msh_cli_command *c = &commands[i];
            const char *name = c->name;
            if (!*name || c->group)
                continue;
            if (glen) {
                if (strncmp(name, group, glen) != 0 || name[glen] != ' ')
                    continue;
                name += glen + 1;
            }
            if (pass == 0) {
                width = strlen(name) > width ? strlen(name) : width;
                continue;
            }
            fprintf(f, "  %-*s  ", (int)width, name);
            wrap(f, c->summary, 2 + width + 2, 2 + width + 2);
        }
}

void msh_cli_usage(FILE *f, const char *name) {
    const msh_cli_command *c = msh_cli_command_find(name);
    if (!c)
        return;
    fprintf(f, "usage: modelshrink%s%s %s\n", *name ? " " : "", name, c->synopsis);
    if (!*name)
        fputs("       modelshrink --help | --version\n", f);
    if (c->about) {
        fputc('\n', f);
        wrap(f, c->about, 0, 0);
    }
    if (!*name || c->group) {
        fputs("\ncommands:\n", f);
        print_commands(f, name);
    }
    int any = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const msh_cli_row *r = &rows[i];
        if (strcmp(r->cmd, name) != 0)
            continue;
        if (!any && r->kind != MSH_CLI_ROW_HEADING)
            fputs("\noptions:\n", f);
        any = 1;
        if (r->kind == MSH_CLI_ROW_HEADING)
            fprintf(f, "\n%s:\n", r->text);
        else if (r->kind == MSH_CLI_ROW_TEXT)
            fputs("  ", f), wrap(f, r->text, 2, 2);
        else
            print_option(f, r);
    }
    if (!*name) {
        fputc('\n', f);
        wrap(f,
             "'modelshrink help COMMAND' or 'modelshrink COMMAND --help' prints a command's "
             "usage and options.",
             0, 0);
    }
    fputc('\n', f);
    wrap(f, c->exits, 0, 0);
}

int msh_cli_getopt(const char *name, struct option *longopts, size_t cap, char *shortopts,
                   size_t scap) {
    size_t n = 0, s = 0;
    if (scap < 2)
        return 0;
    shortopts[s++] = ':';
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const msh_cli_row *r = &rows[i];
        if (r->kind != MSH_CLI_ROW_OPTION || strcmp(r->cmd, name) != 0)
            continue;
        if (n + 1 >= cap || s + 3 >= scap)
            return 0;
        longopts[n++] =
            (struct option){r->name, r->arg ? required_argument : no_argument, NULL, r->id};
        if (r->short_name) {
            shortopts[s++] = r->short_name;
            if (r->arg)
                shortopts[s++] = ':';
        }
    }
    longopts[n] = (struct option){NULL, 0, NULL, 0};
    shortopts[s] = 0;
    return 1;
}
