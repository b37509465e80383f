/* Self-contained HTML pages: `inspect --html` (where a model's bytes go, and what each conversion
 * would save) and `report html` (a batch report). One file each, with no network assets: inline
 * CSS, inline SVG, and an inline script that only sorts a table (the page reads the same without
 * it). Built on the public API and cJSON. */
#ifndef MSH_CLI_HTML_H
#define MSH_CLI_HTML_H

/* `modelshrink inspect --html OUT FILE`: the exit code (0, or 1 with one line on stderr and
 * nothing at OUT). `savings` 0 leaves out the conversions. */
int msh_cli_html_inspect(const char *in, const char *out, int savings);

/* `modelshrink report html REPORT... -o OUT`: the exit code (0; 1 when OUT cannot be written;
 * 2 when a report cannot be read or is not a report). */
int msh_cli_html_report(int n, char **reports, const char *out);

#endif
