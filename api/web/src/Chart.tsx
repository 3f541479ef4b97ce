import { useEffect, useRef } from 'react';
import * as echarts from 'echarts/core';
import { BarChart, LineChart, PieChart } from 'echarts/charts';
import { GridComponent, LegendComponent, TooltipComponent } from 'echarts/components';
import { CanvasRenderer } from 'echarts/renderers';

// Only what the dashboard draws (tree-shaken: about a third of all of ECharts).
echarts.use([BarChart, LineChart, PieChart, GridComponent, LegendComponent, TooltipComponent, CanvasRenderer]);

type Option = echarts.EChartsCoreOption;

declare global {
  interface Window {
    /** Every mounted chart by data-testid, for the browser test (getOption). */
    netwatchCharts?: Record<string, echarts.EChartsType>;
  }
}

interface Props {
  option: Option | null;
  testid: string;
  height?: number;
  /** The REST URL the series come from, and how (see browser.mjs). */
  src?: string;
  map?: string;
}

// Chart renders an ECharts option into a div and resizes with it.
export default function Chart({ option, testid, height = 240, src, map }: Props) {
  const el = useRef<HTMLDivElement>(null);
  const chart = useRef<echarts.EChartsType | null>(null);
  useEffect(() => {
    const c = echarts.init(el.current!, null, { renderer: 'canvas' });
    chart.current = c;
    window.netwatchCharts = { ...(window.netwatchCharts || {}), [testid]: c };
    const ro = new ResizeObserver(() => c.resize());
    ro.observe(el.current!);
    return () => {
      ro.disconnect();
      if (window.netwatchCharts?.[testid] === c) delete window.netwatchCharts[testid];
      c.dispose();
      chart.current = null;
    };
  }, [testid]);
  useEffect(() => {
    if (chart.current && option) chart.current.setOption(option, { notMerge: true, lazyUpdate: false });
  }, [option]);
  return (
    <div
      ref={el}
      data-testid={testid}
      data-src={src}
      data-map={map}
      data-ready={option ? 'true' : 'false'}
      className="chart"
      style={{ height }}
    />
  );
}

/**
 * lineOption is a time-series chart with up to two y axes; each axis's fmt
 * labels its ticks (si: SI prefixes, enough significant digits to tell
 * ticks apart) and the tooltip values of its series.
 */
export function lineOption(
  series: { name: string; data: [string | number, number][]; axis?: number; area?: boolean }[],
  axes: { name: string; fmt: (v: number) => string }[],
): Option {
  return {
    animation: false,
    tooltip: { trigger: 'axis' },
    legend: { top: 0 },
    grid: { left: 56, right: axes.length > 1 ? 56 : 16, top: 36, bottom: 28, containLabel: false },
    xAxis: { type: 'time', axisLabel: { hideOverlap: true } },
    yAxis: axes.map((a) => ({ type: 'value', name: a.name, axisLabel: { formatter: a.fmt } })),
    series: series.map((s) => ({
      name: s.name,
      type: 'line',
      showSymbol: s.data.length <= 30,
      yAxisIndex: s.axis || 0,
      areaStyle: s.area ? { opacity: 0.2 } : undefined,
      tooltip: { valueFormatter: (v: number) => axes[s.axis || 0].fmt(v) },
      data: s.data,
    })),
  };
}

/** barOption is a horizontal bar chart of labelled values, largest on top. */
export function barOption(name: string, labels: string[], values: number[], fmt: (v: number) => string): Option {
  return {
    animation: false,
    tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' }, valueFormatter: (v: number) => fmt(v) },
    grid: { left: 8, right: 24, top: 8, bottom: 8, containLabel: true },
    xAxis: { type: 'value', axisLabel: { formatter: fmt } },
    yAxis: { type: 'category', inverse: true, data: labels, axisLabel: { hideOverlap: true } },
    series: [{ name, type: 'bar', data: values }],
  };
}

/** pieOption is a donut of named values. */
export function pieOption(name: string, data: { name: string; value: number }[], fmt: (v: number) => string): Option {
  return {
    animation: false,
    tooltip: { trigger: 'item', formatter: (p: { name: string; value: number; percent: number }) => `${p.name}: ${fmt(p.value)} (${p.percent}%)` },
    series: [{ name, type: 'pie', radius: ['40%', '70%'], data, minShowLabelAngle: 8, label: { formatter: '{b}' } }],
  };
}
