/* Human-readable rendering of one inspect report (a cJSON object of the --json schema). */
#ifndef MSH_CLI_TABLE_H
#define MSH_CLI_TABLE_H

#include <cjson/cJSON.h>
#include <stdio.h>

void msh_cli_print_table(const cJSON *report, FILE *out);

#endif
