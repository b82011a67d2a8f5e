// tc_uart_rx: UART receiver for 8N1 frames.
// The asynchronous rx line is first passed through a two-flop synchronizer.
// A falling edge starts a frame; the start bit is checked again half a bit
// period later, then each data bit is sampled in the middle of its period,
// LSB first. After the stop bit, data holds the byte and valid pulses for one
// clock cycle; frame_err pulses instead when the stop bit is low.
module tc_uart_rx #(
    parameter CLKS_PER_BIT = 16
) (
    input            clk,
    input            rst,
    input            rx,
    output reg [7:0] data,
    output reg       valid,
    output reg       frame_err
);
    reg        rx_meta, rx_sync;
    reg [1:0]  state;
    reg [15:0] clk_cnt;
    reg [2:0]  bit_idx;

    always @(posedge clk) begin
        rx_meta <= rx;
        rx_sync <= rx_meta;
    end

    always @(posedge clk) begin
        valid     <= 1'b0;
        frame_err <= 1'b0;
        if (rst) begin
            state   <= 2'd0;
            clk_cnt <= 0;
            bit_idx <= 0;
            data    <= 8'h00;
        end else begin
            case (state)
                2'd0: begin // idle: wait for the start bit
                    clk_cnt <= 0;
                    if (!rx_sync)
                        state <= 2'd1;
                end
                2'd1: begin // confirm the start bit at its middle
                    if (clk_cnt == CLKS_PER_BIT / 2 - 1) begin
                        clk_cnt <= 0;
                        bit_idx <= 0;
                        state   <= rx_sync ? 2'd0 : 2'd2;
                    end else
                        clk_cnt <= clk_cnt + 1'b1;
                end
                2'd2: begin // sample the data bits
                    if (clk_cnt == CLKS_PER_BIT - 1) begin
                        clk_cnt       <= 0;
                        data[bit_idx] <= rx_sync;
                        bit_idx       <= bit_idx + 1'b1;
                        if (bit_idx == 3'd7)
                            state <= 2'd3;
                    end else
                        clk_cnt <= clk_cnt + 1'b1;
                end
                2'd3: begin // stop bit
                    if (clk_cnt == CLKS_PER_BIT - 1) begin
                        valid     <= rx_sync;
                        frame_err <= !rx_sync;
                        state     <= 2'd0;
                    end else
                        clk_cnt <= clk_cnt + 1'b1;
                end
            endcase
        end
    end
endmodule
