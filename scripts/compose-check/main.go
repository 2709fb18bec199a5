// Command compose-check loads docker-compose.yml with compose-go, the loader that
// `docker compose` itself uses: schema validation, interpolation with defaults,
// normalization and resolved paths. It needs neither Docker nor the bind-mounted folders.
// It prints the project's services (all profiles) and exits 1 with the loader's error on
// an invalid file.
//
//	go run . ../../docker-compose.yml
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check PATH/TO/docker-compose.yml")
		os.Exit(2)
	}
	project, err := load(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid compose file %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	fmt.Printf("project %s: %d services\n", project.Name, len(project.Services))
	names := make([]string, 0, len(project.Services))
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Println(describe(project.Services[name]))
	}
}

func load(path string) (*types.Project, error) {
	options, err := cli.NewProjectOptions(
		[]string{path},
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
		// Every profile, so the replay and autoscale services are checked too.
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		return nil, err
	}
	return options.LoadProject(context.Background())
}

func describe(service types.ServiceConfig) string {
	parts := []string{fmt.Sprintf("service %s", service.Name)}
	if service.Image != "" {
		parts = append(parts, "image="+service.Image)
	}
	if service.Build != nil {
		parts = append(parts, "build="+service.Build.Context)
	}
	if len(service.Profiles) > 0 {
		parts = append(parts, "profiles="+strings.Join(service.Profiles, ","))
	}
	if len(service.Command) > 0 {
		parts = append(parts, fmt.Sprintf("command=%q", strings.Join(service.Command, " ")))
	}
	for _, port := range service.Ports {
		parts = append(parts, fmt.Sprintf("port=%s:%s->%d", port.HostIP, port.Published, port.Target))
	}
	deps := make([]string, 0, len(service.DependsOn))
	for name, dep := range service.DependsOn {
		deps = append(deps, name+":"+dep.Condition)
	}
	if len(deps) > 0 {
		sort.Strings(deps)
		parts = append(parts, "depends_on="+strings.Join(deps, ","))
	}
	return strings.Join(parts, " ")
}
