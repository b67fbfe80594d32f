// SPDX-License-Identifier: Apache-2.0
/*
 * unlinkbench: create N empty files, then delete them with unlinkat(dirfd, name, 0).
 * Only the unlink phase is timed (CLOCK_MONOTONIC). Prints one JSON line on stdout.
 *
 *   unlinkbench -n N -d DIR [-w WORKERS] [-r RATE] [-p PREFIX] [-t TSFILE] [-m rename]
 *
 * -w forks WORKERS processes that share the N files (N/WORKERS each, names PREFIX-W-I);
 *    all finish creating before any starts deleting, and the parent times the whole phase.
 * -r paces the deletions at RATE unlinks/s in total (0: as fast as possible).
 * -t writes each worker's CLOCK_REALTIME ns of every unlink (u64, native order) to TSFILE.W.
 * -m rename times renameat(dirfd, name, dirfd, name + "~") instead; the renamed files stay for the caller
 *    to remove (bench/workload.py remove_files), untraced.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct opts {
	long n;
	const char *dir;
	int workers;
	double rate;
	const char *prefix;
	const char *tsfile;
	int rename;
};

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define PACE_SLACK_NS 200000ull

static void sleep_until_ns(uint64_t target)
{
	struct timespec ts = { .tv_sec = target / 1000000000ull, .tv_nsec = target % 1000000000ull };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void usage(void)
{
	fprintf(stderr, "usage: unlinkbench -n N -d DIR [-w WORKERS] [-r RATE] [-p PREFIX] [-t TSFILE] [-m rename]\n");
	exit(2);
}

/* One worker: create its files, report ready on ready_fd, wait for go_fd, unlink them. */
static void worker(const struct opts *o, int w, long count, int ready_fd, int go_fd)
{
	char name[256];
	char c = 'r';
	uint64_t *stamps = NULL;
	int dirfd = open(o->dir, O_RDONLY | O_DIRECTORY);

	if (dirfd < 0)
		die("open dir");
	for (long i = 0; i < count; i++) {
		snprintf(name, sizeof(name), "%s-%d-%ld", o->prefix, w, i);
		int fd = openat(dirfd, name, O_CREAT | O_WRONLY | O_TRUNC, 0644);

		if (fd < 0)
			die("create");
		close(fd);
	}
	if (o->tsfile && !(stamps = calloc((size_t)count + 1, sizeof(*stamps))))
		die("calloc");
	if (write(ready_fd, &c, 1) != 1 || read(go_fd, &c, 1) != 1)
		die("sync");

	double per_worker_rate = o->rate / o->workers;
	uint64_t start = now_ns(CLOCK_MONOTONIC);

	for (long i = 0; i < count; i++) {
		if (per_worker_rate > 0) {
			/* Sleep only when ahead by more than PACE_SLACK_NS: one timer wake-up per slack
			 * window instead of one per unlink, which on a small machine costs more CPU than
			 * the unlink itself. The average rate is exact; deletions come in short bursts. */
			uint64_t due = start + (uint64_t)((double)i * 1e9 / per_worker_rate);

			if (due > now_ns(CLOCK_MONOTONIC) + PACE_SLACK_NS)
				sleep_until_ns(due);
		}
		snprintf(name, sizeof(name), "%s-%d-%ld", o->prefix, w, i);
		if (stamps)
			stamps[i] = now_ns(CLOCK_REALTIME);
		if (o->rename) {
			char to[260];

			snprintf(to, sizeof(to), "%s~", name);
			if (renameat(dirfd, name, dirfd, to) != 0)
				die("renameat");
		} else if (unlinkat(dirfd, name, 0) != 0) {
			die("unlinkat");
		}
	}

	if (stamps) {
		char path[4096];
		FILE *f;

		snprintf(path, sizeof(path), "%s.%d", o->tsfile, w);
		f = fopen(path, "wb");
		if (!f || fwrite(stamps, sizeof(*stamps), (size_t)count, f) != (size_t)count || fclose(f) != 0)
			die("timestamps");
	}
	exit(0);
}

static void parse(int argc, char **argv, struct opts *o)
{
	int c;

	*o = (struct opts){ .n = 0, .dir = NULL, .workers = 1, .rate = 0, .prefix = "uwb", .tsfile = NULL };
	while ((c = getopt(argc, argv, "n:d:w:r:p:t:m:")) != -1) {
		switch (c) {
		case 'n': o->n = atol(optarg); break;
		case 'd': o->dir = optarg; break;
		case 'w': o->workers = atoi(optarg); break;
		case 'r': o->rate = atof(optarg); break;
		case 'p': o->prefix = optarg; break;
		case 't': o->tsfile = optarg; break;
		case 'm':
			if (strcmp(optarg, "rename") && strcmp(optarg, "unlink"))
				usage();
			o->rename = !strcmp(optarg, "rename");
			break;
		default: usage();
		}
	}
	if (o->n <= 0 || !o->dir || o->workers <= 0 || o->rate < 0 || strlen(o->prefix) > 200)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o;
	int ready[2], go[2];
	char c;

	parse(argc, argv, &o);
	if (pipe(ready) || pipe(go))
		die("pipe");
	for (int w = 0; w < o.workers; w++) {
		long count = o.n / o.workers + (w < o.n % o.workers ? 1 : 0);
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0) {
			/* a worker dies with its parent: a killed bench leaves no deleter busy in its mount */
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
				_exit(1);
			close(ready[0]);
			close(go[1]);
			worker(&o, w, count, ready[1], go[0]);
		}
	}
	close(ready[1]);
	close(go[0]);
	for (int w = 0; w < o.workers; w++)
		if (read(ready[0], &c, 1) != 1)
			{ fprintf(stderr, "unlinkbench: a worker failed before the unlink phase\n"); return 1; }

	uint64_t wall = now_ns(CLOCK_REALTIME);
	uint64_t t0 = now_ns(CLOCK_MONOTONIC);

	for (int w = 0; w < o.workers; w++)
		if (write(go[1], "g", 1) != 1)
			die("go");
	int failed = 0, status;

	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed = 1;
	uint64_t t1 = now_ns(CLOCK_MONOTONIC);
	double secs = (double)(t1 - t0) / 1e9;

	if (failed) {
		fprintf(stderr, "unlinkbench: a worker failed\n");
		return 1;
	}
	printf("{\"n\": %ld, \"workers\": %d, \"rate\": %.0f, \"seconds\": %.6f, \"unlinks_per_s\": %.1f, "
	       "\"start_realtime_ns\": %" PRIu64 ", \"prefix\": \"%s\"}\n",
	       o.n, o.workers, o.rate, secs, (double)o.n / secs, wall, o.prefix);
	return 0;
}
