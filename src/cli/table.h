/* Human-readable rendering of one inspect report (a cJSON object of the --json schema). */
#ifndef MSH_CLI_TABLE_H
#define MSH_CLI_TABLE_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include <stdint.h>

void msh_cli_print_table(const cJSON *report, FILE *out);

/* A byte count as people read it, in the units of inspect and convert alike: "512 B", then
 * powers of 1000 with one decimal ("198.6 kB", "1.4 GB"). Exact counts are in the JSON. */
void msh_cli_human_bytes(double n, char *buf, size_t cap);

/* `one` when n is 1, else `many` ("1 tensor", "2 tensors", "0 tensors"). */
const char *msh_cli_plural(double n, const char *one, const char *many);

#endif
